"""The typed messages of a secure-aggregation round, in the order they cross.

    coordinator -> every silo      Setup                 who takes part, the threshold, the ring
    silo -> coordinator            KeyAdvert             two public keys, signed
    coordinator -> every silo      ShareKeys             every advert that came back
    silo -> coordinator            SealedShares          shares of its secrets, one sealed box per peer
    coordinator -> every silo      MaskRequest           (inside train_round) the boxes addressed to it
    silo -> coordinator            MaskedInput           (inside train_round's answer) its masked update
    coordinator -> every survivor  Unmask                who sent a masked input, who dropped
    survivor -> coordinator        UnmaskShares          self-mask shares of survivors, mask-key shares of the dropped

Each is a protocol Message: read back from a request body with every field checked, so a
malformed one is refused in one line naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedlake.agent.protocol import Message, ProtocolError

ADVERTISE_ACTION = "secagg_advertise"
SHARE_KEYS_ACTION = "secagg_share_keys"
UNMASK_ACTION = "secagg_unmask"
MASK_FIELD = "secagg"  # the MaskRequest inside a train_round body
MASKED_FIELD = "masked"  # the MaskedInput inside a train_round answer


@dataclass(frozen=True)
class Setup(Message):
    kind: ClassVar[str] = "secagg_setup"
    session: str
    round: int
    participants: list[str]
    threshold: int
    frac_bits: int
    vector_size: int
    purpose: str


@dataclass(frozen=True)
class KeyAdvert(Message):
    kind: ClassVar[str] = "secagg_key_advert"
    silo: str
    channel_public: str
    mask_public: str
    signature: str


@dataclass(frozen=True)
class ShareKeys(Message):
    kind: ClassVar[str] = "secagg_share_keys"
    session: str
    adverts: list[dict[str, str]]
    purpose: str

    def parsed(self) -> list[KeyAdvert]:
        if not all(isinstance(a, dict) for a in self.adverts):
            raise ProtocolError(f"a {self.kind} message's 'adverts' must be key adverts")
        return [KeyAdvert.from_fields(a) for a in self.adverts]


@dataclass(frozen=True)
class SealedShares(Message):
    kind: ClassVar[str] = "secagg_sealed_shares"
    silo: str
    sealed: dict[str, str]  # recipient -> base64 AES-GCM box
    checked: bool  # whether this silo checked every advert's signature (False: it was given no keys)


@dataclass(frozen=True)
class MaskRequest(Message):
    kind: ClassVar[str] = "secagg_mask_request"
    session: str
    sealed: dict[str, str]  # sender -> base64 box addressed to this silo


@dataclass(frozen=True)
class MaskedInput(Message):
    kind: ClassVar[str] = "secagg_masked_input"
    silo: str
    vector: str  # base64 of little-endian uint64 ring elements
    signature: str


@dataclass(frozen=True)
class Unmask(Message):
    kind: ClassVar[str] = "secagg_unmask"
    session: str
    survivors: list[str]
    dropped: list[str]
    signatures: dict[str, str]  # survivor -> its signature over its masked input's session
    purpose: str


@dataclass(frozen=True)
class UnmaskShares(Message):
    kind: ClassVar[str] = "secagg_unmask_shares"
    silo: str
    self_mask: dict[str, str]  # survivor -> share of its self-mask seed
    mask_key: dict[str, str]  # dropped silo -> share of its mask private key
