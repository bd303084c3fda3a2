"""The keys of one secure-aggregation round: two X25519 pairs per silo, signed advertisements,
and what is derived from a Diffie-Hellman agreement.

Each silo makes two fresh pairs per round, as in SecAgg (Bonawitz et al., CCS 2017): the mask pair,
whose agreement with a peer seeds their pairwise mask, and the channel pair, whose agreement keys
the AES-GCM channel that carries secret shares through the coordinator. They are kept apart because
the mask private key of a silo that drops is rebuilt from shares; that must not also open the
channel in which that silo sent its own shares.

An advertisement is signed with the silo's Ed25519 ledger key (the one that signs its audit chain)
over the session, the silo's name and both public keys: the coordinator routes the keys but cannot
substitute its own to sit in the middle of a pair.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedlake.errors import FedlakeError

_RAW = serialization.Encoding.Raw


class KeyCheckFailed(FedlakeError):
    """A key, signature or ciphertext that does not check out."""


def public_hex(key: X25519PrivateKey) -> str:
    return key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw).hex()


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def load_public(text: str, what: str) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except ValueError:
        raise KeyCheckFailed(f"{what} is not a hex X25519 public key") from None


def load_private(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


@dataclass
class RoundKeys:
    """A silo's private keys for one round: they never leave it (the mask key only as shares)."""

    channel: X25519PrivateKey
    mask: X25519PrivateKey

    @classmethod
    def fresh(cls) -> RoundKeys:
        return cls(X25519PrivateKey.generate(), X25519PrivateKey.generate())


def advert_text(session: str, silo: str, channel_public: str, mask_public: str) -> bytes:
    """What a silo signs: canonical JSON, so no two adverts sign the same bytes."""
    return json.dumps(["fedlake-secagg-advert", session, silo, channel_public, mask_public]).encode()


def masked_text(session: str, silo: str) -> bytes:
    """What a silo signs when it sends its masked input: the proof that it took part in the sum."""
    return json.dumps(["fedlake-secagg-masked", session, silo]).encode()


def sign(signer: Ed25519PrivateKey, text: bytes) -> str:
    return signer.sign(text).hex()


def verify(public: Ed25519PublicKey, signature: str, text: bytes, what: str) -> None:
    try:
        public.verify(bytes.fromhex(signature), text)
    except (InvalidSignature, ValueError):
        raise KeyCheckFailed(f"{what}: the signature does not verify with that silo's public key") from None


def _derive(private: X25519PrivateKey, public: X25519PublicKey, session: str, purpose: bytes) -> bytes:
    shared = private.exchange(public)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=session.encode(), info=purpose).derive(shared)


def pair_seed(mask: X25519PrivateKey, peer_mask: X25519PublicKey, session: str) -> bytes:
    """The seed of a pairwise mask: both silos of the pair, and no one else, can compute it."""
    return _derive(mask, peer_mask, session, b"fedlake secagg pairwise mask")


def seal(channel: X25519PrivateKey, peer_channel: X25519PublicKey, session: str, sender: str, recipient: str, plaintext: bytes) -> bytes:
    """AES-GCM under the pair's channel key; sender and recipient are bound as associated data."""
    key = _derive(channel, peer_channel, session, b"fedlake secagg share channel")
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, f"{session}|{sender}|{recipient}".encode())


def open_sealed(channel: X25519PrivateKey, peer_channel: X25519PublicKey, session: str, sender: str, recipient: str, sealed: bytes) -> bytes:
    key = _derive(channel, peer_channel, session, b"fedlake secagg share channel")
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], f"{session}|{sender}|{recipient}".encode())
    except (InvalidTag, ValueError):
        raise KeyCheckFailed(f"the shares from {sender} to {recipient} do not decrypt: altered, or not for this round") from None
