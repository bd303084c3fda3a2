"""Where fragments meet: a DuckDB that loads fragments' streams as they arrive and runs the residual
query over them. The governed zone runs one; so does a silo's agent when the planner places the
residual there.

The DuckDB is closed to the outside (no files, no extensions, configuration locked), so a residual
query sees the fragments it was given and nothing else; it spills to its own temporary folder beyond
its memory limit, so memory is bounded by the query, not by the silos.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp

from fedlake.errors import FedlakeError
from fedlake.runtime import process_alive, tolerate_unaligned_arrow
from fedlake.silos.base import counted


def _ident(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


SPILL_PREFIX = "fedlake-residual-"


def sweep_spills(folder: Path | None = None) -> list[Path]:
    """Remove the spill folders of workspaces whose process is gone (killed before it could clean
    up: a residual past its deadline, say); each folder's name carries its process id."""
    removed = []
    for spill in Path(folder or tempfile.gettempdir()).glob(f"{SPILL_PREFIX}*-*"):
        pid = spill.name[len(SPILL_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(spill, ignore_errors=True)
            removed.append(spill)
    return removed


class Workspace:
    _swept = False

    def __init__(self, memory_limit: str = "2GB"):
        tolerate_unaligned_arrow()
        if not Workspace._swept:
            Workspace._swept = True
            sweep_spills()
        self._spill = tempfile.TemporaryDirectory(prefix=f"{SPILL_PREFIX}{os.getpid()}-")
        self._db = duckdb.connect(config={
            "memory_limit": memory_limit, "temp_directory": self._spill.name, "preserve_insertion_order": True,
            "autoinstall_known_extensions": False, "autoload_known_extensions": False,
        })
        # closed only once the spill folder is set: DuckDB refuses that folder to a closed database
        self._db.execute("SET enable_external_access = false")
        self._db.execute("SET lock_configuration = true")
        self._cursors: set[duckdb.DuckDBPyConnection] = set()
        self._lock = threading.Lock()

    def load(self, name: str, reader: pa.RecordBatchReader, arrived: Callable[[int, int], None]) -> None:
        """Load a fragment's stream as table `name` (from any thread); `arrived(rows, bytes)` as it comes."""
        cursor = self._db.cursor()
        with self._lock:
            self._cursors.add(cursor)
        try:
            cursor.register("incoming", pa.RecordBatchReader.from_batches(reader.schema, counted(reader, arrived)))
            cursor.execute(f"CREATE TABLE {_ident(name)} AS SELECT * FROM incoming")
        finally:
            with self._lock:
                self._cursors.discard(cursor)
            cursor.close()
            reader.close()

    def interrupt(self) -> None:
        """Stop every load under way (another fragment failed: the query cannot succeed)."""
        with self._lock:
            for cursor in self._cursors:
                cursor.interrupt()

    def distinct(self, columns: list[tuple[str, str]]) -> pa.ChunkedArray:
        """The distinct values of these (table, column)s together: the keys of a semi-join."""
        cursor = self._db.cursor()
        try:
            union = " UNION ".join(f"SELECT DISTINCT {_ident(column)} AS k FROM {_ident(table)}" for table, column in columns)
            return cursor.execute(union).to_arrow_table().column("k")
        finally:
            cursor.close()

    def keys(self, sql: str) -> pa.ChunkedArray:
        """The first column of a query over the loaded fragments: a semi-join's exact keys."""
        cursor = self._db.cursor()
        try:
            return cursor.execute(sql).to_arrow_table().column(0)
        finally:
            cursor.close()

    def run(self, sql: str, finished: Callable[[int, int], None]) -> pa.RecordBatchReader:
        """Stream the residual's result; the workspace closes when the stream ends (or fails to start)."""
        try:
            result = self._db.execute(sql).fetch_record_batch(65_536)
        except BaseException:
            self.close()
            raise

        def done(rows: int, nbytes: int) -> None:
            finished(rows, nbytes)
            self.close()

        return pa.RecordBatchReader.from_batches(result.schema, counted(result, done))

    def close(self) -> None:
        self._db.close()
        self._spill.cleanup()


def check_residual(sql: str, fragments: set[str]) -> None:
    """A residual reads only its fragments (and its own CTEs): one query, no qualified names, no
    table functions. Checked before anything runs; the closed DuckDB would refuse files anyway."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise FedlakeError(f"the residual query does not parse: {exc}") from None
    if not isinstance(tree, exp.Query):
        raise FedlakeError("a residual is one SELECT over the fragments")
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    tables = [t for t in tree.find_all(exp.Table) if t.name not in ctes]
    unknown = {t.name for t in tables} - fragments
    if unknown or any(t.args.get("db") or isinstance(t.this, exp.Func) for t in tables):
        raise FedlakeError(f"the residual may read only its fragments ({', '.join(sorted(fragments))}), "
                           f"not {', '.join(sorted(unknown)) or 'a qualified name or a table function'}")


def semijoin_keys(workspace: Workspace, build: Iterable[tuple[str, str]], keys_sql: str, fragments: set[str]) -> pa.ChunkedArray:
    """A semi-join's keys: the distinct values of its build columns, or exactly those its keys query
    computes over the loaded fragments (checked, like a residual, to read only them)."""
    if keys_sql:
        check_residual(keys_sql, fragments)
        return workspace.keys(keys_sql)
    return workspace.distinct(list(build))
