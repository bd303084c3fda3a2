"""Running a federated query: fragments concurrently in their silos through their agents, the
residual in DuckDB at the governed zone, over the fragments' streamed results.

Each fragment's batches are loaded into the governed zone's DuckDB as they arrive (DuckDB spills to
disk beyond its memory limit), so memory is bounded by the query, not by the silos.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from fedlake.agent.client import AgentClient
from fedlake.catalog import Catalog
from fedlake.query.cut import Cut, Fragment, PlanningError, cut_query

_SQL_TYPES = {"string": "VARCHAR", "large_string": "VARCHAR", "bool": "BOOLEAN", "double": "DOUBLE", "float": "FLOAT",
              "date32[day]": "DATE"}


def _sql_type(arrow_type: str) -> str:
    if arrow_type in _SQL_TYPES:
        return _SQL_TYPES[arrow_type]
    if arrow_type.startswith(("int", "uint")):
        return "BIGINT"
    if arrow_type.startswith("timestamp"):
        return "TIMESTAMP"
    if arrow_type.startswith("decimal"):
        return "DOUBLE"
    return "VARCHAR"


@dataclass
class FragmentRun:
    fragment: Fragment
    estimated_rows: int | None = None
    estimated_bytes: int | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    sql_in_silo: str = ""
    rows: int | None = None
    bytes: int | None = None
    seconds: float | None = None


@dataclass
class FederatedPlan:
    query: str
    purpose: str
    destination: str
    cut: Cut
    runs: list[FragmentRun]
    result_rows: int | None = None
    result_bytes: int | None = None
    seconds: float | None = None

    @property
    def bytes_crossing(self) -> int | None:
        if any(r.bytes is None for r in self.runs):
            return None
        return sum(r.bytes for r in self.runs)

    def bytes_by_silo(self) -> dict[str, int]:
        moved: dict[str, int] = {}
        for r in self.runs:
            moved[r.fragment.silo] = moved.get(r.fragment.silo, 0) + (r.bytes or 0)
        return moved


class Federation:
    """One query over every silo, through their agents, with the results in the governed zone."""

    def __init__(self, catalog: Catalog, clients: dict[str, AgentClient], memory_limit: str = "2GB"):
        self.catalog = catalog
        self.clients = clients
        self.memory_limit = memory_limit

    def _schema(self, sql: str) -> dict[str, dict[str, dict[str, str]]]:
        """{silo: {table: {column: type}}} for the tables the query names, asked of their agents."""
        import sqlglot
        from sqlglot import exp

        try:
            tree = sqlglot.parse_one(sql, read="duckdb")
        except sqlglot.errors.ParseError as exc:
            raise PlanningError(f"cannot parse the query: {exc}") from None
        schema: dict[str, dict[str, dict[str, str]]] = {name: {} for name in self.catalog.silos}
        present: dict[str, set[str]] = {}
        for table in tree.find_all(exp.Table):
            if table.db in self.clients and table.name not in schema[table.db]:
                if table.db not in present:
                    present[table.db] = set(self.clients[table.db].list_tables())
                if table.name in present[table.db]:
                    columns = self.clients[table.db].schema(table.name)
                    schema[table.db][table.name] = {name: _sql_type(type_) for name, type_ in columns}
        return schema

    def plan(self, sql: str, purpose: str, with_estimates: bool = True) -> FederatedPlan:
        destination = self.catalog.governed_region
        cut = cut_query(sql, self._schema(sql), set(self.catalog.silos))
        runs = [FragmentRun(f) for f in cut.fragments]
        if with_estimates:
            for run in runs:
                client = self.clients[run.fragment.silo]
                explained = client.explain(run.fragment.sql, purpose, destination)
                run.decisions = explained["columns"]
                if explained["denied"]:
                    continue
                run.sql_in_silo = explained["sql"]
                estimate = client.estimate(run.fragment.sql, purpose, destination)
                run.estimated_rows, run.estimated_bytes = estimate["rows"], estimate["bytes"]
        return FederatedPlan(sql, purpose, destination, cut, runs)

    def run(self, sql: str, purpose: str) -> tuple[pa.Table, FederatedPlan]:
        plan = self.plan(sql, purpose, with_estimates=False)
        reader = self.stream(plan)
        table = reader.read_all()
        plan.result_rows, plan.result_bytes = table.num_rows, table.nbytes
        return table, plan

    def stream(self, plan: FederatedPlan) -> pa.RecordBatchReader:
        """Run the fragments, then stream the residual's result; the DuckDB behind it lives as long as the stream."""
        started = time.perf_counter()
        spill = tempfile.TemporaryDirectory(prefix="fedlake-governed-")
        db = duckdb.connect(config={"memory_limit": self.memory_limit, "temp_directory": spill.name,
                                    "autoinstall_known_extensions": False, "preserve_insertion_order": True})
        lock = threading.Lock()

        def fetch(run: FragmentRun) -> None:
            t0 = time.perf_counter()
            reader = self.clients[run.fragment.silo].query(run.fragment.sql, plan.purpose, plan.destination)
            counted = _Counted(reader)
            cursor = db.cursor()
            try:
                cursor.register("incoming", counted.reader())
                cursor.execute(f'CREATE TABLE "{run.fragment.name}" AS SELECT * FROM incoming')
            finally:
                cursor.close()
            with lock:
                run.rows, run.bytes, run.seconds = counted.rows, counted.bytes, time.perf_counter() - t0

        try:
            with ThreadPoolExecutor(max_workers=max(1, min(8, len(plan.runs)))) as pool:
                list(pool.map(fetch, plan.runs))
            result = db.execute(plan.cut.residual).fetch_record_batch(65_536)
        except BaseException:
            db.close()
            spill.cleanup()
            raise

        def batches() -> Iterator[pa.RecordBatch]:
            rows = nbytes = 0
            try:
                for batch in result:
                    rows += batch.num_rows
                    nbytes += batch.nbytes
                    yield batch
            finally:
                plan.result_rows, plan.result_bytes = rows, nbytes
                plan.seconds = time.perf_counter() - started
                db.close()
                spill.cleanup()

        return pa.RecordBatchReader.from_batches(result.schema, batches())


class _Counted:
    """Counts the rows and bytes of a fragment's stream as they arrive at the governed zone."""

    def __init__(self, reader: pa.RecordBatchReader):
        self._reader = reader
        self.rows = 0
        self.bytes = 0

    def reader(self) -> pa.RecordBatchReader:
        def batches() -> Iterator[pa.RecordBatch]:
            for batch in self._reader:
                self.rows += batch.num_rows
                self.bytes += batch.nbytes
                yield batch

        return pa.RecordBatchReader.from_batches(self._reader.schema, batches())
