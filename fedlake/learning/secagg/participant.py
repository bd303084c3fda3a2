"""A silo's side of secure aggregation: its keys, its shares of its peers' secrets, its masked input.

State lives per (client identity, session), so concurrent trainings, or another client, never
touch each other's rounds; every stage runs once and in order, and the state is dropped after the
unmasking (or after SESSION_TTL_S). Whatever the coordinator claims is checked before it is
acted on: adverts must carry a valid signature of the silo they name, the silo's own advert must
come back unchanged, and at the unmasking a silo gives out, for each peer, a share of its
self-mask seed (the peer is a survivor, with a signed masked input) or of its mask key (the peer
dropped), never both, and answers one unmasking per session. A threshold above half the
participants means the coordinator cannot collect both kinds for one silo by telling different
silos different stories.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedlake.agent.agent import Forbidden
from fedlake.learning.secagg import keys, ring, shamir
from fedlake.learning.secagg.messages import KeyAdvert, MaskedInput, MaskRequest, SealedShares, Setup, ShareKeys, Unmask, UnmaskShares
from fedlake.learning.weights import Weights

SESSION_TTL_S = 3600.0
MAX_SESSIONS = 64  # open sessions kept; beyond, the oldest is dropped (its round can no longer finish)
MIN_FRAC_BITS, MAX_FRAC_BITS = 8, 40

PeerKeys = Callable[[str], Ed25519PublicKey | None]


class SecAggRefused(Forbidden):
    """A secure-aggregation step the silo will not take: decided from the request and its own
    state only, so the message may leave the agent."""


def points(participants: list[str]) -> dict[str, int]:
    """Each participant's share point: its place among the round's sorted names, from 1."""
    return {silo: i + 1 for i, silo in enumerate(sorted(participants))}


def mask_sign(silo: str, peer: str) -> int:
    """+1 if `silo` adds the pair's mask, -1 if it subtracts it: the pair's two masks cancel."""
    return 1 if silo < peer else -1


@dataclass
class _Session:
    setup: Setup
    round_keys: keys.RoundKeys
    created: float
    stage: str = "advertised"
    adverts: dict[str, KeyAdvert] = field(default_factory=dict)
    self_seed: bytes = b""
    held: dict[str, tuple[shamir.Share, shamir.Share]] = field(default_factory=dict)  # owner -> (self-mask, mask-key) shares
    masked_with: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Participant:
    def __init__(self, silo: str, signer: Ed25519PrivateKey | None, peer_keys: PeerKeys, verify: bool = True,
                 known_silos: frozenset[str] | None = None):
        self.silo = silo
        self.signer = signer
        self.peer_keys = peer_keys
        self.verify = verify  # False: no key source configured, signatures cannot be checked here
        self.known_silos = known_silos  # the deployment's silos: no one else may be a participant
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._lock = threading.Lock()

    def refused(self, what: str) -> SecAggRefused:
        return SecAggRefused(f"agent {self.silo}: secure aggregation: {what}")

    # -- state ----------------------------------------------------------------------------------

    @contextmanager
    def _session(self, identity: str, session: str, stage: str) -> Iterator[_Session]:
        """The session, held for one stage: a second call for the same stage waits, then is refused."""
        with self._lock:
            state = self._sessions.get((identity, session))
        if state is None:
            raise self.refused(f"no open session {session!r} for client '{identity}' (expired, finished, or never set up)")
        with state.lock:
            if state.stage != stage:
                raise self.refused(f"session {session!r} is at stage '{state.stage}', not '{stage}': each stage runs once, in order")
            yield state

    def _check_signature(self, silo: str, signature: str, text: bytes, what: str) -> None:
        if self.verify:
            keys.verify(self._public_key(silo), signature, text, what)

    def _public_key(self, silo: str) -> Ed25519PublicKey:
        key = self.peer_keys(silo)
        if key is None:
            raise self.refused(f"no public signing key for silo '{silo}' to check its key advert (FEDLAKE_LEDGER_KEYS, or the deployment's keys folder)")
        return key

    # -- stages ---------------------------------------------------------------------------------

    def advertise(self, identity: str, setup: Setup) -> KeyAdvert:
        n = len(setup.participants)
        if self.silo not in setup.participants or len(set(setup.participants)) != n or n < 2:
            raise self.refused(f"participants {setup.participants} must be at least two distinct silos, this one among them")
        strangers = sorted(set(setup.participants) - self.known_silos) if self.known_silos is not None else []
        if strangers:
            raise self.refused(f"participants {strangers} are not silos of this deployment: a party the coordinator "
                               "controls would learn the others' sum less its own")
        if not n // 2 < setup.threshold <= n:
            raise self.refused(f"threshold {setup.threshold} must be above half of the {n} participants and at most {n}")
        if not MIN_FRAC_BITS <= setup.frac_bits <= MAX_FRAC_BITS or setup.vector_size < 1:
            raise self.refused(f"frac_bits must be in [{MIN_FRAC_BITS}, {MAX_FRAC_BITS}] and vector_size positive")
        if self.signer is None:
            raise self.refused("this agent has no signing key to sign its key advert")
        now = time.monotonic()
        state = _Session(setup, keys.RoundKeys.fresh(), now)
        channel, mask = keys.public_hex(state.round_keys.channel), keys.public_hex(state.round_keys.mask)
        signature = keys.sign(self.signer, keys.advert_text(setup.session, self.silo, channel, mask))
        advert = state.adverts[self.silo] = KeyAdvert(self.silo, channel, mask, signature)
        with self._lock:
            for key in [k for k, s in self._sessions.items() if now - s.created > SESSION_TTL_S]:
                del self._sessions[key]
            if (identity, setup.session) in self._sessions:
                raise self.refused(f"session {setup.session!r} is already open: a session is set up once")
            while len(self._sessions) >= MAX_SESSIONS:  # rounds abandoned by their coordinator: the oldest goes
                del self._sessions[min(self._sessions, key=lambda k: self._sessions[k].created)]
            self._sessions[(identity, setup.session)] = state
        return advert

    def share_keys(self, identity: str, request: ShareKeys) -> SealedShares:
        with self._session(identity, request.session, "advertised") as state:
            setup = state.setup
            adverts = request.parsed()
            names = [a.silo for a in adverts]
            if len(set(names)) != len(names) or not set(names) <= set(setup.participants) or self.silo not in names:
                raise self.refused(f"adverts name {names}: they must be distinct participants and include this silo")
            if len(adverts) < setup.threshold:
                raise self.refused(f"{len(adverts)} adverts, fewer than the threshold {setup.threshold}")
            for advert in adverts:
                if advert.silo == self.silo and advert != state.adverts[self.silo]:
                    raise self.refused("this silo's own advert came back altered")
                text = keys.advert_text(setup.session, advert.silo, advert.channel_public, advert.mask_public)
                self._check_signature(advert.silo, advert.signature, text, f"the key advert of {advert.silo}")
            published = [k for a in adverts for k in (a.channel_public, a.mask_public)]
            if len(set(published)) != len(published):
                raise self.refused("two adverts share a public key")
            state.adverts = {a.silo: a for a in adverts}
            state.self_seed = os.urandom(shamir.SECRET_BYTES)
            where = points(setup.participants)
            at = [where[s] for s in sorted(names)]
            self_shares = shamir.split(state.self_seed, setup.threshold, at)
            key_shares = shamir.split(keys.private_bytes(state.round_keys.mask), setup.threshold, at)
            sealed = {}
            for peer in sorted(names):
                pair = (self_shares[where[peer]], key_shares[where[peer]])
                if peer == self.silo:
                    state.held[self.silo] = pair
                    continue
                plaintext = json.dumps({"sender": self.silo, "recipient": peer, "self_mask": pair[0].to_hex(), "mask_key": pair[1].to_hex()}).encode()
                box = keys.seal(state.round_keys.channel, keys.load_public(state.adverts[peer].channel_public, f"{peer}'s channel key"),
                                setup.session, self.silo, peer, plaintext)
                sealed[peer] = base64.b64encode(box).decode()
            state.stage = "shared"
        return SealedShares(self.silo, sealed, self.verify)

    def mask(self, identity: str, request: MaskRequest, weights: Weights, n_samples: int) -> MaskedInput:
        with self._session(identity, request.session, "shared") as state:
            setup = state.setup
            senders = sorted(request.sealed)
            if not set(senders) <= set(state.adverts) - {self.silo}:
                raise self.refused(f"boxes from {senders}: only advertised peers other than this silo send shares")
            if len(senders) + 1 < setup.threshold:
                raise self.refused(f"shares from {len(senders)} peers: with this silo, fewer than the threshold {setup.threshold}")
            for sender in senders:
                try:
                    box = base64.b64decode(request.sealed[sender], validate=True)
                except ValueError:
                    raise self.refused(f"the box from {sender} is not base64") from None
                peer_channel = keys.load_public(state.adverts[sender].channel_public, f"{sender}'s channel key")
                try:
                    content = json.loads(keys.open_sealed(state.round_keys.channel, peer_channel, setup.session, sender, self.silo, box))
                    if content.get("sender") != sender or content.get("recipient") != self.silo:
                        raise ValueError("addressed to someone else")
                    state.held[sender] = (shamir.Share.from_hex(content["self_mask"]), shamir.Share.from_hex(content["mask_key"]))
                except (keys.KeyCheckFailed, shamir.ShareError, ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise self.refused(f"the shares from {sender} are unusable: {exc}") from None
            layout = ring.Layout.of(weights)
            if layout.size != setup.vector_size:
                raise self.refused(f"the update has {layout.size} ring elements, the round expects {setup.vector_size}: another model spec?")
            vector = ring.quantize(layout.flatten(weights, n_samples), setup.frac_bits, len(setup.participants))
            vector = vector + ring.expand(state.self_seed, layout.size)
            for peer in senders:
                seed = keys.pair_seed(state.round_keys.mask, keys.load_public(state.adverts[peer].mask_public, f"{peer}'s mask key"), setup.session)
                pad = ring.expand(seed, layout.size)
                vector = vector + pad if mask_sign(self.silo, peer) > 0 else vector - pad
            state.masked_with = [*senders, self.silo]
            state.stage = "masked"
        signature = keys.sign(self.signer, keys.masked_text(setup.session, self.silo))
        return MaskedInput(self.silo, base64.b64encode(ring.to_wire(vector)).decode(), signature)

    def unmask(self, identity: str, request: Unmask) -> UnmaskShares:
        with self._session(identity, request.session, "masked") as state:
            survivors, dropped = set(request.survivors), set(request.dropped)
            masked_with = set(state.masked_with)
            if survivors & dropped or survivors | dropped != masked_with or self.silo not in survivors:
                raise self.refused(
                    f"survivors {sorted(survivors)} and dropped {sorted(dropped)} must split the silos this one masked with "
                    f"({sorted(masked_with)}), and include it among the survivors")
            if len(survivors) < state.setup.threshold:
                raise self.refused(f"{len(survivors)} survivors, fewer than the threshold {state.setup.threshold}")
            for silo in sorted(survivors):
                signature = request.signatures.get(silo, "")
                self._check_signature(silo, signature, keys.masked_text(state.setup.session, silo), f"the masked input of {silo}")
            state.stage = "unmasked"
            with self._lock:
                self._sessions.pop((identity, request.session), None)
            return UnmaskShares(
                self.silo,
                {silo: state.held[silo][0].to_hex() for silo in sorted(survivors)},
                {silo: state.held[silo][1].to_hex() for silo in sorted(dropped)},
            )

