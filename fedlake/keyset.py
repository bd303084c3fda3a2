"""Semi-join keys, for reducing a fragment by the keys another fragment sent.

The coordinator (or the agent running a placed residual) sends the probe fragment's agent a Bloom
filter of the distinct keys it holds; the agent runs its fragment with a filter that keeps only
rows whose key may be among them, inside the silo's engine where the engine is DuckDB (the lakes,
and PostgreSQL silos read through DuckDB), after it otherwise. A false positive (about 1 % of the
rows without a match) only lets a row through that the join above removes, so results never
change. About 1.2 bytes a key, where the keys' own 64-bit hashes cost 8: a key set is sent to every
probe silo, so with K silos its cost is paid K - 1 times. The filter reveals no key.

Keys are hashed by DuckDB's `hash()` after a cast to one canonical type per family (text or
integer), so both sides agree whatever engine produced the values; coordinator and agents run the
same pinned DuckDB, which also tests the filter's bits (double hashing over the hash's halves). The
filter applies to the fragment's output, after its masks: it selects among rows the caller may
receive anyway, so it can reveal nothing the rows themselves would not.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fedlake.errors import FedlakeError

FALSE_POSITIVE_RATE = 0.01
BITS_PER_KEY = -math.log(FALSE_POSITIVE_RATE) / math.log(2) ** 2  # 9.6: the optimal size for that rate
PROBES = max(1, round(BITS_PER_KEY * math.log(2)))  # 7 bit positions a key
MAX_KEYS = 1_000_000  # beyond this, binding the keys costs more than a semi-join saves
MAX_KEYS_BYTES = 64 * 1024 * 1024  # what an agent accepts for one fragment, all its key sets together
_CASTS = {"text": "VARCHAR", "integer": "BIGINT"}
_LOW = 0xFFFFFFFF


def key_family(t: pa.DataType) -> str | None:
    """The canonical type keys of this Arrow type are hashed as, or None if they are not joinable keys."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "text"
    if pa.types.is_integer(t):
        return "integer"
    return None


def keyset_bytes(keys: int) -> int:
    """What a key set of this many distinct keys costs on the wire: its filter's 64-bit words."""
    return 8 * max(1, math.ceil(keys * BITS_PER_KEY / 64))


def _db() -> duckdb.DuckDBPyConnection:
    return duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False, "threads": 1})


def _hash_sql(column: str, family: str) -> str:
    return f"hash(CAST({column} AS {_CASTS[family]}))"


def _member_sql(hashed: str, words: str, bits: int, probes: int) -> str:
    """DuckDB's test of one hash against a filter bound as the UBIGINT[] `words`: every one of its
    bit positions, (h1 + i * h2) mod bits for the halves h1, h2 of the hash, is set."""
    tests = []
    for i in range(probes):
        position = f"((({hashed} & {_LOW}) + {i} * (({hashed} >> 32) | 1)) % {bits})"
        tests.append(f"(list_extract({words}, CAST({position} // 64 AS BIGINT) + 1) >> ({position} % 64)) & 1 = 1")
    return "(" + " AND ".join(tests) + ")"


@dataclass(frozen=True)
class KeySet:
    """A Bloom filter of a semi-join's distinct keys, of one family."""

    family: str
    words: pa.Array  # uint64, the filter's bits: bit b is bit b % 64 of word b // 64
    keys: int  # the distinct keys it was built from
    probes: int = PROBES

    @property
    def bits(self) -> int:
        return 64 * len(self.words)

    @property
    def nbytes(self) -> int:
        """What crosses a border with it: its Arrow column (one uint64 word per 64 bits, no nulls)."""
        return self.words.nbytes

    @classmethod
    def of(cls, values: pa.Array | pa.ChunkedArray, family: str) -> KeySet:
        db = _db()
        try:
            db.register("keys", pa.table({"k": values}))
            out = db.execute(f"SELECT DISTINCT {_hash_sql('k', family)} AS h FROM keys WHERE k IS NOT NULL").to_arrow_table()
        finally:
            db.close()
        hashes = out.column("h").to_numpy().astype(np.uint64, copy=False)
        words = np.zeros(keyset_bytes(len(hashes)) // 8, dtype=np.uint64)
        bits = np.uint64(64 * len(words))
        low, high = hashes & np.uint64(_LOW), (hashes >> np.uint64(32)) | np.uint64(1)
        for i in range(PROBES):
            position = (low + np.uint64(i) * high) % bits
            np.bitwise_or.at(words, (position >> np.uint64(6)).astype(np.int64), np.left_shift(np.uint64(1), position & np.uint64(63)))
        return cls(family, pa.array(words, pa.uint64()), len(hashes))

    def to_table(self) -> pa.Table:
        metadata = {b"family": self.family.encode(), b"keys": str(self.keys).encode(), b"probes": str(self.probes).encode()}
        return pa.table({"bits": self.words}, metadata=metadata)

    @classmethod
    def from_table(cls, table: pa.Table) -> KeySet:
        """A key set as a peer sent it: checked, since it comes over the network."""
        metadata = table.schema.metadata or {}
        family = metadata.get(b"family", b"").decode()
        keys, probes = metadata.get(b"keys", b""), metadata.get(b"probes", b"")
        if (family not in _CASTS or table.schema.names != ["bits"] or not pa.types.is_uint64(table.schema.field("bits").type)
                or not keys.isdigit() or not probes.isdigit() or not 0 < int(probes) <= 16
                or table.num_rows == 0 or table.column("bits").null_count):
            raise FedlakeError("semi-join keys are a Bloom filter: one uint64 column 'bits' without nulls, with a family "
                               "of 'text' or 'integer' and its keys and probes (1 to 16) counted")
        if int(keys) > MAX_KEYS:
            raise FedlakeError(f"semi-join keys: {int(keys)} keys, more than the {MAX_KEYS} accepted")
        return cls(family, table.column("bits").combine_chunks(), int(keys), int(probes))

    def member_sql(self, hashed: str, param: str) -> str:
        """The condition that a hash (a UBIGINT expression) may be one of the keys; the filter binds as `$param`."""
        return _member_sql(hashed, f"CAST(${param} AS UBIGINT[])", self.bits, self.probes)

    def param(self) -> list[int]:
        return self.words.to_pylist()


def keys_if_they_pay(values: pa.ChunkedArray, limit: float, condition: str) -> tuple[KeySet | None, str]:
    """The key set of these values if it costs at most `limit` bytes, else None and why not."""
    family = key_family(values.type)
    if family is None:
        return None, f"semi-join on {condition} not used: its keys are {values.type}, not text or integers"
    keys = KeySet.of(values, family)
    if keys.keys > MAX_KEYS or keys.nbytes > limit:
        return None, (f"semi-join on {condition} not used: {keys.keys} keys ({keys.nbytes} bytes) would cost more "
                      f"than they save (at most {int(limit)} bytes)")
    return keys, ""


def filtered_sql(sql: str, filters: list[tuple[str, KeySet, str]]) -> tuple[str, dict[str, list[int]]]:
    """`sql` keeping only rows whose key may be in its key set; (column, keys, parameter name) each.
    Each key is hashed once, in a column of its own that the result leaves out."""
    hashed, conditions, params = [], [], {}
    for i, (column, keys, param) in enumerate(filters):
        quoted = '"' + column.replace('"', '""') + '"'
        hashed.append(f"{_hash_sql('__fl_q.' + quoted, keys.family)} AS __fl_h{i}")
        conditions.append(keys.member_sql(f"__fl_h{i}", param))
        params[param] = keys.param()
    hidden = ", ".join(f"__fl_h{i}" for i in range(len(filters)))
    return (f"SELECT * EXCLUDE ({hidden}) FROM (SELECT *, {', '.join(hashed)} FROM ({sql}) AS __fl_q) AS __fl_q "
            f"WHERE {' AND '.join(conditions)}"), params


def filter_batches(batches: Iterator[pa.RecordBatch], filters: list[tuple[str, KeySet]]) -> Iterator[pa.RecordBatch]:
    """The same filter after the engine, batch by batch, where the engine cannot hash as DuckDB does."""
    db = _db()
    try:
        for batch in batches:
            for column, keys in filters:
                db.register("b", pa.table({"k": batch.column(column)}))
                member = keys.member_sql("h", "words")
                kept = db.execute(f"SELECT {member} AS m FROM (SELECT {_hash_sql('k', keys.family)} AS h FROM b)",
                                  {"words": keys.param()}).to_arrow_table().column("m")
                batch = batch.filter(pc.fill_null(kept, False))
            yield batch
    finally:
        db.close()
