"""Shamir's t-of-n secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

Any `threshold` shares give the secret back by Lagrange interpolation at 0; fewer tell nothing
about it (every secret is equally consistent with them). The `cryptography` package has no
secret sharing, and the scheme is a polynomial and its interpolation, so it is written out here.
The prime is the Mersenne prime 2^521 - 1: larger than any 32-byte secret, so one share each.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from fedlake.errors import FedlakeError

PRIME = 2**521 - 1
SECRET_BYTES = 32
_SHARE_BYTES = 66  # an element of the field, big-endian


class ShareError(FedlakeError):
    """Shares that cannot give a secret back: too few, duplicated, or not of this field."""


@dataclass(frozen=True)
class Share:
    x: int  # the holder's point, 1..n: never 0, where the secret is
    y: int

    def to_hex(self) -> str:
        return f"{self.x}:{self.y.to_bytes(_SHARE_BYTES, 'big').hex()}"

    @classmethod
    def from_hex(cls, text: str) -> Share:
        try:
            x, y = text.split(":")
            share = cls(int(x), int.from_bytes(bytes.fromhex(y), "big"))
        except (ValueError, AttributeError):
            raise ShareError("a share is '<x>:<hex y>'") from None
        if not 1 <= share.x < PRIME or not 0 <= share.y < PRIME:
            raise ShareError(f"share point {share.x} or value is outside the field")
        return share


def split(secret: bytes, threshold: int, points: list[int]) -> dict[int, Share]:
    """Shares of `secret` at each point: a random polynomial of degree threshold - 1 through it."""
    if len(secret) != SECRET_BYTES:
        raise ShareError(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(points) or len(set(points)) != len(points) or min(points) < 1:
        raise ShareError(f"need 1 <= threshold ({threshold}) <= distinct positive points ({points})")
    coefficients = [int.from_bytes(secret, "big"), *(secrets.randbelow(PRIME) for _ in range(threshold - 1))]
    return {x: Share(x, _evaluate(coefficients, x)) for x in points}


def combine(shares: list[Share], threshold: int) -> bytes:
    """The secret from at least `threshold` shares (the first threshold distinct ones are used)."""
    distinct = {s.x: s for s in shares}
    if len(distinct) != len(shares):
        raise ShareError("two shares at the same point")
    if len(distinct) < threshold:
        raise ShareError(f"{len(distinct)} shares, fewer than the threshold {threshold}")
    chosen = list(distinct.values())[:threshold]
    secret = 0
    for i, share in enumerate(chosen):
        numerator, denominator = 1, 1
        for j, other in enumerate(chosen):
            if i != j:
                numerator = numerator * -other.x % PRIME
                denominator = denominator * (share.x - other.x) % PRIME
        secret = (secret + share.y * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise ShareError("the shares do not belong to one 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")


def _evaluate(coefficients: list[int], x: int) -> int:
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % PRIME
    return value
