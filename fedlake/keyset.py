"""Semi-join keys, for reducing a fragment by the keys another fragment sent.

The coordinator (or the agent running a placed residual) sends the probe fragment's agent the
64-bit hashes of the distinct keys it holds; the agent runs its fragment with a filter that keeps
only rows whose key hashes to one of them, inside the silo's engine where the engine is DuckDB
(the lakes, and PostgreSQL silos read through DuckDB), after it otherwise. A hash collision only
lets a row through that the join above removes, so results never change. 8 bytes a key.

Keys are hashed by DuckDB's `hash()` after a cast to one canonical type per family (text or
integer), so both sides agree whatever engine produced the values; coordinator and agents run the
same pinned DuckDB. The filter applies to the fragment's output, after its masks: it selects among
rows the caller may receive anyway, so it can reveal nothing the rows themselves would not.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from fedlake.errors import FedlakeError

KEY_BYTES = 8
MAX_KEYS = 1_000_000  # beyond this, binding the keys costs more than a semi-join saves
MAX_KEYS_BYTES = 64 * 1024 * 1024  # what an agent accepts for one fragment, all its key sets together
_CASTS = {"text": "VARCHAR", "integer": "BIGINT"}


def key_family(t: pa.DataType) -> str | None:
    """The canonical type keys of this Arrow type are hashed as, or None if they are not joinable keys."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "text"
    if pa.types.is_integer(t):
        return "integer"
    return None


def _db() -> duckdb.DuckDBPyConnection:
    return duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False, "threads": 1})


def _hash_sql(column: str, family: str) -> str:
    return f"hash(CAST({column} AS {_CASTS[family]}))"


@dataclass(frozen=True)
class KeySet:
    """The distinct hashes of a semi-join's keys, of one family."""

    family: str
    hashes: pa.Array  # uint64, distinct, no nulls

    @property
    def keys(self) -> int:
        return len(self.hashes)

    @property
    def nbytes(self) -> int:
        return KEY_BYTES * len(self.hashes)

    @classmethod
    def of(cls, values: pa.Array | pa.ChunkedArray, family: str) -> KeySet:
        db = _db()
        try:
            db.register("keys", pa.table({"k": values}))
            out = db.execute(f"SELECT DISTINCT {_hash_sql('k', family)} AS h FROM keys WHERE k IS NOT NULL").to_arrow_table()
        finally:
            db.close()
        return cls(family, out.column("h").combine_chunks())

    def to_table(self) -> pa.Table:
        return pa.table({"h": self.hashes}, metadata={b"family": self.family.encode()})

    @classmethod
    def from_table(cls, table: pa.Table) -> KeySet:
        """A key set as a peer sent it: checked, since it comes over the network."""
        family = (table.schema.metadata or {}).get(b"family", b"").decode()
        if family not in _CASTS or table.schema.names != ["h"] or not pa.types.is_uint64(table.schema.field("h").type):
            raise FedlakeError("semi-join keys are one uint64 column 'h' with a family of 'text' or 'integer'")
        if table.num_rows > MAX_KEYS:
            raise FedlakeError(f"semi-join keys: {table.num_rows} keys, more than the {MAX_KEYS} accepted")
        return cls(family, table.column("h").combine_chunks().drop_null())


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
    """`sql` keeping only rows whose key hashes to one of its key set; (column, keys, parameter name)
    each. The keys bind as list parameters, so the engine joins against them."""
    conditions, params = [], {}
    for column, keys, param in filters:
        quoted = '"' + column.replace('"', '""') + '"'
        conditions.append(f"{_hash_sql('__fl_q.' + quoted, keys.family)} IN (SELECT UNNEST(CAST(${param} AS UBIGINT[])))")
        params[param] = keys.hashes.to_pylist()
    return f"SELECT * FROM ({sql}) AS __fl_q WHERE {' AND '.join(conditions)}", params


def filter_batches(batches: Iterator[pa.RecordBatch], filters: list[tuple[str, KeySet]]) -> Iterator[pa.RecordBatch]:
    """The same filter after the engine, batch by batch, where the engine cannot hash as DuckDB does."""
    db = _db()
    try:
        for batch in batches:
            for column, keys in filters:
                db.register("b", pa.table({"k": batch.column(column)}))
                hashes = db.execute(f"SELECT {_hash_sql('k', keys.family)} AS h FROM b").to_arrow_table().column("h")
                batch = batch.filter(pc.fill_null(pc.is_in(hashes, value_set=keys.hashes), False))
            yield batch
    finally:
        db.close()
