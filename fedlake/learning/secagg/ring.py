"""Fixed-point updates in the ring of integers mod 2^64, and the masks that live there.

Masks cancel exactly only in a finite ring: float masks would leave rounding residue in the sum.
Each silo scales its update by 2^frac_bits, rounds it to a signed 64-bit integer and lets uint64
arithmetic wrap (numpy's uint64 add and subtract are mod 2^64). The coordinator's sum, read back as
int64 and divided by 2^frac_bits, is the plain sum to within 2^-frac_bits per silo.

A mask is the ChaCha20 keystream of a 32-byte seed read as uint64: uniform over the ring, so a
masked element is uniform whatever the update under it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedlake.errors import FedlakeError
from fedlake.learning.weights import Weights

RING_BITS = 64
DEFAULT_FRAC_BITS = 24
_NONCE = b"\x00" * 16  # each seed expands once per round: the seed, not the nonce, is fresh
_WIRE = np.dtype("<u8")


class RingOverflow(FedlakeError):
    """An update too large for the fixed-point range: the sum would wrap and come out wrong."""


@dataclass(frozen=True)
class Layout:
    """Which tensors a flat vector holds, in order: float tensors by sorted name, then the count.

    Both sides derive it from the model spec, so only ring elements cross, not names or shapes."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, weights: Weights) -> Layout:
        integer = sorted(k for k, v in weights.items() if not np.issubdtype(v.dtype, np.floating))
        if integer:
            raise FedlakeError(f"secure aggregation sums float tensors only; the model also holds integer tensors {integer}")
        names = tuple(sorted(weights))
        return cls(names, tuple(tuple(weights[k].shape) for k in names), tuple(str(weights[k].dtype) for k in names))

    @property
    def size(self) -> int:
        """Elements in a vector: every weight, and one more for the sample count."""
        return sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes) + 1

    def flatten(self, weights: Weights, n_samples: int) -> np.ndarray:
        """The silo's contribution to a sample-weighted mean: n * w, then n itself."""
        if set(weights) != set(self.names):
            raise FedlakeError(f"weights hold {sorted(weights)}, the round expects {list(self.names)}")
        parts = [np.asarray(weights[k], dtype=np.float64).ravel() * n_samples for k in self.names]
        return np.concatenate([*parts, np.array([float(n_samples)])])

    def mean(self, total: np.ndarray) -> tuple[Weights, int]:
        """The sample-weighted mean from the summed vector, and the total sample count."""
        n_total = int(round(float(total[-1])))
        if n_total <= 0:
            raise FedlakeError(f"the unmasked sample count is {n_total}: the sum is not one of honest updates")
        out: Weights = {}
        start = 0
        for name, shape, dtype in zip(self.names, self.shapes, self.dtypes):
            size = int(np.prod(shape, dtype=np.int64))
            out[name] = (total[start : start + size] / n_total).reshape(shape).astype(dtype)
            start += size
        return out, n_total


def quantize(values: np.ndarray, frac_bits: int, parties: int) -> np.ndarray:
    """float64 -> ring elements; refused where a sum over `parties` silos could leave int64."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * float(2**frac_bits))
    bound = float(2 ** (RING_BITS - 1)) / max(parties, 1)
    if not np.all(np.isfinite(scaled)) or np.any(np.abs(scaled) >= bound):
        worst = float(np.nanmax(np.abs(values))) if np.any(np.isfinite(values)) else float("nan")
        raise RingOverflow(
            f"an update value ({worst:.3g}, times the sample count) is outside the fixed-point range "
            f"±{bound / 2**frac_bits:.3g} for {parties} silos at {frac_bits} fraction bits (or is not finite): lower frac_bits"
        )
    return scaled.astype(np.int64).view(np.uint64)


def dequantize(ring: np.ndarray, frac_bits: int) -> np.ndarray:
    return ring.view(np.int64).astype(np.float64) / float(2**frac_bits)


def expand(seed: bytes, size: int) -> np.ndarray:
    """The mask of `seed`: `size` uniform ring elements from ChaCha20's keystream."""
    if len(seed) != 32:
        raise ValueError(f"a mask seed is 32 bytes, got {len(seed)}")
    stream = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor().update(bytes(8 * size))
    return np.frombuffer(stream, dtype=_WIRE).astype(np.uint64)


def to_wire(vector: np.ndarray) -> bytes:
    return vector.astype(_WIRE).tobytes()


def from_wire(raw: bytes, size: int) -> np.ndarray:
    if len(raw) != 8 * size:
        raise FedlakeError(f"a masked vector of {len(raw)} bytes, expected {8 * size} ({size} ring elements)")
    return np.frombuffer(raw, dtype=_WIRE).astype(np.uint64)
