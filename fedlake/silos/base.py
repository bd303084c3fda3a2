"""The one interface every silo kind implements.

A connector runs work *inside* its silo: fragments execute there and stream back as Arrow record
batches, materializations stay there. It counts every row and byte that leaves it, so that "nothing
left the silo" is a measured fact rather than an absence of errors.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from abc import ABC, abstractmethod
from contextlib import contextmanager
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from fedlake.errors import SiloError

DEFAULT_BATCH_ROWS = 65_536
# How long one request may run in a silo's engine before it is interrupted: a cross join that would
# run for hours, or a client that went away while a blocking operator computes, stops here.
REQUEST_SECONDS = float(os.environ.get("FEDLAKE_REQUEST_SECONDS", "600"))


def duckdb_stream(cursor, sql: str, params: dict | None, batch_rows: int, silo: str) -> tuple[pa.RecordBatchReader, Callable[[], None]]:
    """Run `sql` on a DuckDB cursor under the request limit: its reader, and what ends it (call it
    when the stream ends, and tie it to the stream's generator with `ended_with`, since a stream
    that is never read never runs its generator's `finally`)."""
    import duckdb

    deadline = interrupt_after(cursor)
    try:
        reader = (cursor.execute(sql, params) if params else cursor.execute(sql)).fetch_record_batch(batch_rows)
    except duckdb.Error as exc:
        deadline.cancel()
        cursor.close()
        raise SiloError(f"silo {silo}: {exc}") from exc

    def close() -> None:
        deadline.cancel()
        cursor.close()

    return reader, close


def ended_with(batches: Iterator[pa.RecordBatch], close: Callable[[], None]) -> Iterator[pa.RecordBatch]:
    """`close` runs when the generator is collected too, read or not (the timer holds its cursor)."""
    weakref.finalize(batches, close)
    return batches


def interrupt_after(cursor, seconds: float | None = None) -> threading.Timer:
    """Interrupt a DuckDB cursor's query after `seconds` (REQUEST_SECONDS), unless the timer is
    cancelled first."""
    timer = threading.Timer(REQUEST_SECONDS if seconds is None else seconds, cursor.interrupt)
    timer.daemon = True
    timer.start()
    return timer


@dataclass
class EgressCounter:
    """Rows and bytes (Arrow buffer sizes) that left the silo through this connector."""

    rows: int = 0
    bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, batch: pa.RecordBatch) -> None:
        with self._lock:
            self.rows += batch.num_rows
            self.bytes += batch.nbytes

    def add_bytes(self, nbytes: int) -> None:
        """Bytes that left without rows (model weights, validation results)."""
        with self._lock:
            self.bytes += nbytes

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.rows, self.bytes


def counted(
    batches: Iterable[pa.RecordBatch],
    done: Callable[[int, int], None] | None = None,
    each: Callable[[pa.RecordBatch], None] | None = None,
) -> Iterator[pa.RecordBatch]:
    """The batches, counted on their way: `each` sees every batch, and `done` gets the rows and bytes
    that went by when the stream ends, or is abandoned."""
    rows = nbytes = 0
    try:
        for batch in batches:
            rows += batch.num_rows
            nbytes += batch.nbytes
            if each is not None:
                each(batch)
            yield batch
    finally:
        if done is not None:
            done(rows, nbytes)


@dataclass(frozen=True)
class ColumnStats:
    name: str
    type: str
    distinct: int
    null_fraction: float
    min: str | None
    max: str | None


@dataclass(frozen=True)
class TableStats:
    table: str
    rows: int
    bytes: int
    columns: tuple[ColumnStats, ...]


@dataclass(frozen=True)
class TableStatistics:
    """What the planner estimates cardinalities from: the table's rows and, per column, its number
    of distinct non-null values, both estimates from the silo's own statistics. A column absent
    from `distinct` has no estimate."""

    rows: int
    distinct: dict[str, int]


@dataclass(frozen=True)
class MaterializedTable:
    """What stays behind after a materialization: where the table is and how big, not its rows."""

    silo: str
    table: str
    schema: pa.Schema
    rows: int
    bytes: int
    version: int | None = None  # the Delta version a lake's write committed; None where the silo has none


class Connector(ABC):
    """A silo of one kind. SQL comes in DuckDB's dialect over the silo's own table names."""

    kind: str

    def __init__(self, name: str, region: str):
        self.name = name
        self.region = region
        self.egress = EgressCounter()

    @abstractmethod
    def list_tables(self) -> list[str]: ...

    @abstractmethod
    def schema(self, table: str) -> pa.Schema: ...

    @abstractmethod
    def statistics(self, table: str) -> TableStats: ...

    @abstractmethod
    def row_count(self, table: str) -> int: ...

    @abstractmethod
    def column_statistics(self, table: str) -> TableStatistics:
        """Row and distinct-value estimates from the silo's statistics, cached with the table's version."""

    @abstractmethod
    def _stream(self, sql: str, batch_rows: int, params: dict | None = None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]: ...

    @abstractmethod
    def materialize(self, table: str, sql: str, annotations: dict | None = None, params: dict | None = None) -> MaterializedTable:
        """Create or replace `table` inside the silo from `sql` (with named `params`, DuckDB style
        `$name`), atomically: all or nothing.
        `annotations` (JSON-able: e.g. the lineage of each column) are stored with the table, in the
        same commit, so a table and what fedlake knows about it can never disagree."""

    @abstractmethod
    def annotations(self, table: str) -> dict | None:
        """What was stored with a table fedlake materialized; None for any other table."""

    @abstractmethod
    def load(self, table: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
        """The data owner's bulk load (seeding): replace `table` atomically; returns rows written."""

    @abstractmethod
    def drop(self, table: str) -> None: ...

    def close(self) -> None:
        """Release connections; the silo itself keeps running."""

    def estimate_rows(self, sql: str, params: dict | None = None) -> int | None:
        """The silo engine's own estimate of the rows `sql` returns, from its statistics; None if it has none."""
        return None

    def execute(self, sql: str, batch_rows: int = DEFAULT_BATCH_ROWS, params: dict | None = None) -> pa.RecordBatchReader:
        """Run `sql` inside the silo (named `params` bound as `$name`) and stream the result out,
        counting what leaves."""
        schema, batches = self._stream(sql, batch_rows, params)
        return pa.RecordBatchReader.from_batches(schema, counted(batches, each=self.egress.add))

    def __enter__(self) -> Connector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def duckdb_estimate(plan_json: str) -> int | None:
    """The estimated cardinality at the top of a DuckDB `EXPLAIN (FORMAT JSON)` plan."""
    def first(node: dict) -> int | None:
        info = node.get("extra_info") or {}
        if "Estimated Cardinality" in info:
            return int(info["Estimated Cardinality"])
        for child in node.get("children") or []:
            found = first(child)
            if found is not None:
                return found
        return None

    try:
        return first(json.loads(plan_json)[0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def check_table_name(name: str) -> str:
    """Table names become SQL identifiers and storage paths, so only plain identifiers pass."""
    if not name.isidentifier() or name.startswith("_"):
        raise ValueError(f"invalid table name {name!r}: use letters, digits and underscores, not leading '_'")
    return name


def silo_table_name(silo: str, name: str) -> str:
    """`check_table_name` for a connector: the error names the silo."""
    try:
        return check_table_name(name)
    except ValueError as exc:
        raise SiloError(f"silo {silo}: {exc}") from None


@contextmanager
def named_errors(silo: str, doing: str) -> Iterator[None]:
    """Storage and engine errors become one SiloError naming the silo and what it was doing."""
    import duckdb

    try:
        yield
    except SiloError:
        raise
    except (OSError, pa.ArrowException, duckdb.Error) as exc:
        raise SiloError(f"silo {silo}: {doing} failed: {exc}") from exc


# Up to this many rows, distinct values are counted exactly (DuckDB's HyperLogLog can be 20% off at
# a few hundred distinct values; beyond this size, a few per cent); a count is cached per version.
EXACT_DISTINCT_ROWS = 1_000_000


def distinct_sql(table_ref: str, schema: pa.Schema, quote, exact: bool) -> str:
    """Every column's distinct values in one pass: counted, or estimated by DuckDB's HyperLogLog
    (a few per cent off, in memory bounded per column) when the table is large."""
    count = "count(DISTINCT {})" if exact else "approx_count_distinct({})"
    parts = ["count(*) AS n"] + [f"{count.format(quote(f.name))} AS d{i}" for i, f in enumerate(schema)]
    return f"SELECT {', '.join(parts)} FROM {table_ref}"


def stats_sql(table_ref: str, schema: pa.Schema, quote) -> str:
    """One aggregate query computing every column's statistics in place (valid in DuckDB and PostgreSQL)."""
    parts = ["count(*) AS n"]
    for i, f in enumerate(schema):
        c = quote(f.name)
        ordered = f"CAST({c} AS INTEGER)" if pa.types.is_boolean(f.type) else c
        parts += [
            f"count(DISTINCT {c}) AS d{i}",
            f"count({c}) AS c{i}",
            f"CAST(min({ordered}) AS VARCHAR) AS lo{i}",
            f"CAST(max({ordered}) AS VARCHAR) AS hi{i}",
        ]
    return f"SELECT {', '.join(parts)} FROM {table_ref}"


def stats_from_row(table: str, schema: pa.Schema, row: tuple, size: int) -> TableStats:
    n = row[0]
    columns = []
    for i, f in enumerate(schema):
        distinct, non_null, lo, hi = row[1 + 4 * i : 5 + 4 * i]
        columns.append(
            ColumnStats(
                name=f.name,
                type=str(f.type),
                distinct=int(distinct),
                null_fraction=(1 - non_null / n) if n else 0.0,
                min=lo,
                max=hi,
            )
        )
    return TableStats(table=table, rows=int(n), bytes=int(size), columns=tuple(columns))
