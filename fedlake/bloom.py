"""Bloom filters over join keys, for semi-join reduction across silos.

The governed zone builds one from the distinct keys a fragment sent it; the agent of another silo
drops the rows of its own fragment whose key cannot be among them before anything leaves. A false
positive only lets a row through that the join above removes, so results never change; a filter is
about 1.2 bytes per key at a 1 % false-positive rate, far less than the keys, and it reveals no key.

Keys are hashed by DuckDB's `hash()` after a cast to one canonical type per family (text or
integer), so both sides agree whatever engine produced the values; coordinator and agents run the
same pinned DuckDB.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from fedlake.errors import FedlakeError

FALSE_POSITIVE_RATE = 0.01
MAX_FILTER_BYTES = 2 * 1024 * 1024  # beyond this a semi-join is not worth its message


def key_family(t: pa.DataType) -> str | None:
    """The canonical type keys of this Arrow type are hashed as, or None if they are not joinable keys."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "text"
    if pa.types.is_integer(t):
        return "integer"
    return None


def _hashes(values: pa.Array | pa.ChunkedArray, family: str) -> np.ndarray:
    """64-bit hashes of the non-null values, in order (nulls dropped)."""
    cast = "VARCHAR" if family == "text" else "BIGINT"
    db = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False, "threads": 1})
    try:
        keys = pa.table({"k": values})
        db.register("keys", keys)
        out = db.execute(f"SELECT hash(CAST(k AS {cast})) AS h FROM keys WHERE k IS NOT NULL").to_arrow_table()
    finally:
        db.close()
    return out.column("h").to_numpy().astype(np.uint64, copy=False)


def _positions(hashes: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Double hashing: position i of a key is (h1 + i * h2) mod bits, h1 and h2 the halves of its hash."""
    h1 = hashes & np.uint64(0xFFFFFFFF)
    h2 = (hashes >> np.uint64(32)) | np.uint64(1)
    steps = np.arange(count, dtype=np.uint64)
    return (h1[:, None] + steps[None, :] * h2[:, None]) % np.uint64(bits)


@dataclass(frozen=True)
class BloomFilter:
    family: str
    bits: int
    hashes: int
    keys: int
    data: bytes  # the bit array, packed little-endian

    @classmethod
    def of(cls, values: pa.Array | pa.ChunkedArray, family: str) -> BloomFilter:
        hashes = np.unique(_hashes(values, family))
        n = max(1, len(hashes))
        bits = max(1024, math.ceil(-n * math.log(FALSE_POSITIVE_RATE) / math.log(2) ** 2))  # 128 bytes at least
        count = max(1, min(16, round(bits / n * math.log(2))))
        array = np.zeros(bits, dtype=bool)
        if len(hashes):
            array[_positions(hashes, bits, count).ravel()] = True
        return cls(family, bits, count, len(hashes), np.packbits(array, bitorder="little").tobytes())

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def may_contain(self, values: pa.Array | pa.ChunkedArray) -> pa.BooleanArray:
        """True where a value may be a key (nulls are never keys: they join nothing)."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        out = np.zeros(len(values), dtype=bool)
        valid = np.asarray(values.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        if valid.any():
            array = np.unpackbits(np.frombuffer(self.data, dtype=np.uint8), count=self.bits, bitorder="little").astype(bool)
            positions = _positions(_hashes(values, self.family), self.bits, self.hashes)
            out[valid] = array[positions].all(axis=1)
        return pa.array(out, pa.bool_())

    def to_dict(self) -> dict:
        return {"family": self.family, "bits": self.bits, "hashes": self.hashes, "keys": self.keys,
                "data": base64.b64encode(self.data).decode()}

    @classmethod
    def from_dict(cls, raw: dict) -> BloomFilter:
        try:
            data = base64.b64decode(raw["data"], validate=True)
            bloom = cls(str(raw["family"]), int(raw["bits"]), int(raw["hashes"]), int(raw["keys"]), data)
        except (KeyError, TypeError, ValueError) as exc:
            raise FedlakeError(f"malformed semi-join filter: {exc}") from None
        if bloom.family not in ("text", "integer") or len(data) != (bloom.bits + 7) // 8 or not 0 < bloom.hashes < 64:
            raise FedlakeError("malformed semi-join filter: family, size or hash count out of range")
        return bloom


def filter_if_it_pays(keys: pa.ChunkedArray, limit: float, condition: str) -> tuple[BloomFilter | None, str]:
    """The Bloom filter of a semi-join's keys, if it costs at most `limit` bytes (and MAX_FILTER_BYTES);
    otherwise None and why it was not used."""
    family = key_family(keys.type)
    if family is None:
        return None, f"semi-join on {condition} not used: keys of type {keys.type}"
    bloom = BloomFilter.of(keys, family)
    if bloom.nbytes > min(limit, MAX_FILTER_BYTES):
        return None, (f"semi-join on {condition} not used: {bloom.keys:,} keys make a {bloom.nbytes:,}-byte filter, "
                      "more than it could save")
    return bloom, ""
