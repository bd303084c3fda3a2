"""A lake, local or on S3, queried in place by an embedded DuckDB next to it.

Tables are folders. Every table fedlake writes is a Delta Lake table (see `delta`): a write is one
Delta commit, so a failed or killed write leaves the previous version (or nothing) and never a
half-written table, old versions stay readable for the lake's retention period, and any Delta
reader (Spark, Trino, DuckDB) reads the table as a table. A source table that another tool writes
as a plain folder of Parquet files is declared `parquet` in silos.yaml (`silos.<name>.lake.formats`)
and read as it is; fedlake never writes one.

A table's metadata (files, schema, rows, statistics) is cached per version: a Delta version never
changes once committed, and a plain folder's version is its listing (files, sizes, times).
"""

from __future__ import annotations

import copy
import logging
import os
import posixpath
import re
import tempfile
import threading
from collections.abc import Hashable, Iterable, Iterator, Mapping

import duckdb
import duckdb_extensions
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fedlake.errors import SiloError
from fedlake.silos.base import (
    DEFAULT_BATCH_ROWS,
    Connector,
    MaterializedTable,
    TableStatistics,
    EXACT_DISTINCT_ROWS,
    TableStats,
    distinct_sql,
    duckdb_estimate,
    duckdb_stream,
    ended_with,
    named_errors,
    silo_table_name,
    stats_from_row,
    stats_sql,
)
from fedlake.silos.delta import DEFAULT_RETENTION_HOURS, DeltaError, DeltaLake
from fedlake.silos.lake_tables import (
    DELTA,
    PARQUET,
    TableVersion,
    check_pins,
    has_delta_log,
    parquet_files,
    plain_version,
    quote_ident,
)
from fedlake.silos.metadata import MetadataCache

log = logging.getLogger("fedlake.silos")


class LakeConnector(Connector):
    """Shared by the local lake and the S3 lake; they differ only in filesystem, URIs and credentials."""

    def __init__(
        self,
        name: str,
        region: str,
        fs: pafs.FileSystem,
        base: str,
        uri_prefix: str,
        formats: Mapping[str, str] | None = None,
        retention_hours: float = DEFAULT_RETENTION_HOURS,
        storage_options: dict[str, str] | None = None,
    ):
        super().__init__(name, region)
        self._fs = fs
        self._base = base.rstrip("/")  # path of the lake root inside `fs`
        self._uri_prefix = uri_prefix.rstrip("/")  # how DuckDB and delta-rs name the same root
        self._formats = dict(formats or {})  # table -> delta | parquet; undeclared tables are Delta
        self._delta = DeltaLake(self._uri_prefix, storage_options, retention_hours)
        self._pins: dict[str, int] = {}  # table -> the Delta version this connector reads (time travel)
        self._db: duckdb.DuckDBPyConnection | None = None
        self._db_lock = threading.Lock()
        self._views: dict[str, Hashable] = {}  # the version each table's view shows
        self._metadata: MetadataCache[tuple[str, ...]] = MetadataCache(self._uri_prefix)

    # -- storage layout -------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return posixpath.join(self._base, *parts)

    def _uri(self, *parts: str) -> str:
        return posixpath.join(self._uri_prefix, *parts)

    def _file_uri(self, path: str) -> str:
        return self._uri(posixpath.relpath(path, self._base))

    def _fs_path(self, uri: str) -> str:
        return self._path(posixpath.relpath(uri, self._uri_prefix))

    def table_format(self, table: str) -> str:
        return self._formats.get(table, DELTA)

    def _visible(self, table: str) -> TableVersion | None:
        """The version of `table` this connector reads: its current Delta version (or the pinned
        one), or for a plain Parquet table, one listing of its folder."""
        if self.table_format(table) == PARQUET:
            return plain_version(self.name, self._fs, table, self._path(table))
        try:
            snapshot = self._delta.snapshot(table, self._pins.get(table))
        except DeltaError as exc:
            if table in self._pins:
                raise SiloError(
                    f"silo {self.name}: table {table} has no version {self._pins[table]} (versions in its log: "
                    f"{', '.join(map(str, self._delta.versions(table))) or 'none'})"
                ) from None
            raise SiloError(f"silo {self.name}: reading the Delta log of {table} failed: {exc}") from None
        return TableVersion(table, snapshot.token, snapshot) if snapshot else None

    def data_files(self, table: str) -> list[str]:
        """The URIs (local paths, or s3://) of the Parquet files of the table's current version, as
        its Delta log lists them (or, for a plain Parquet table, its folder): what another engine
        reads to see exactly the rows fedlake sees. Stable public API."""
        visible = self._require(table)
        if visible.delta is not None:
            return list(visible.delta.files)
        return [self._file_uri(p) for p in visible.paths]

    def table_version(self, table: str) -> int | None:
        """The Delta version this connector reads of `table`; None for a plain Parquet table."""
        return self._require(table).version

    def _fetch_tables(self) -> tuple[str, ...]:
        tables = []
        for info in self._fs.get_file_info(pafs.FileSelector(self._base, allow_not_found=True)):
            name = posixpath.basename(info.path)
            if info.type != pafs.FileType.Directory or name.startswith("_"):
                continue
            folder = self._path(name)
            if has_delta_log(self._fs, folder) if self.table_format(name) == DELTA else parquet_files(self._fs, folder):
                tables.append(name)
        return tuple(sorted(tables))

    def list_tables(self) -> list[str]:
        with named_errors(self.name, "listing tables"):
            return list(self._metadata.listing(self._fetch_tables))

    def _require(self, table: str) -> TableVersion:
        with named_errors(self.name, f"reading table {table}"):
            visible = self._visible(table)
            if visible is None and self.table_format(table) == DELTA and parquet_files(self._fs, self._path(table)):
                raise SiloError(
                    f"silo {self.name}: table {table} is a folder of plain Parquet files, not a Delta table: "
                    f"declare it in silos.yaml (silos.{self.name}.lake.formats.{table}: parquet)"
                )
        if visible is None:
            raise SiloError(f"silo {self.name}: no table '{table}' (tables: {', '.join(self.list_tables())})")
        return visible

    def _relation(self, visible: TableVersion) -> str:
        return visible.relation(self._uri(visible.table), self._file_uri)

    def at_versions(self, versions: Mapping[str, int]) -> LakeConnector:
        """This lake as it was: each named Delta table read at the given version (time travel, within
        the retention period), the others as they are now. Read-only."""
        check_pins(self.name, self._formats, versions)
        pinned = copy.copy(self)
        pinned._pins = {**self._pins, **versions}
        pinned._db, pinned._db_lock, pinned._views = None, threading.Lock(), {}
        for table in versions:
            files = pinned._require(table).delta.files
            with named_errors(self.name, f"reading table {table}"):
                missing = [i for i in self._fs.get_file_info([self._fs_path(f) for f in files]) if i.type != pafs.FileType.File]
            if missing:
                raise SiloError(
                    f"silo {self.name}: version {versions[table]} of {table} was vacuumed (versions are kept "
                    f"{self._delta.retention_hours:g} h, silos.{self.name}.lake.retention_hours)"
                )
        return pinned

    # -- DuckDB next to the lake ----------------------------------------------------------------

    def _configure(self, db: duckdb.DuckDBPyConnection) -> None:
        """Kind-specific set-up (the S3 lake loads httpfs and its credentials)."""

    def _discard_partial_uploads(self, table: str) -> None:
        """Remove what writers killed before the retention period left under `table` that no vacuum
        sees (S3: unfinished multipart uploads; a local disk: files still named as being written)."""

    def _connection(self) -> duckdb.DuckDBPyConnection:
        with self._db_lock:
            if self._db is None:
                config: dict[str, object] = {"autoinstall_known_extensions": False}
                if not os.environ.get("HOME"):  # a service started without one: the delta extension needs a home
                    config["home_directory"] = tempfile.gettempdir()
                db = duckdb.connect(config=config)
                self._configure(db)
                duckdb_extensions.import_extension("delta", con=db)  # from its wheel, never downloaded
                db.execute("LOAD delta")
                self._db = db
                self._views = {}
            return self._db

    def _cursor(self, sql: str) -> duckdb.DuckDBPyConnection:
        """A cursor whose views show the current version of every table `sql` may name. A view is
        replaced only when its table's version changed, and then from a version read under the
        lock, so that a view never goes back to an older version."""
        db = self._connection()
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", sql))
        with named_errors(self.name, "reading the tables of a fragment"):
            named = {t: self._visible(t) for t in self.list_tables() if t in words}
            with self._db_lock:
                for table, visible in named.items():
                    if visible is None or self._views.get(table) == visible.token:
                        continue
                    visible = self._visible(table)
                    if visible is None or self._views.get(table) == visible.token:
                        continue
                    db.execute(f"CREATE OR REPLACE VIEW {quote_ident(table)} AS SELECT * FROM {self._relation(visible)}")
                    self._views[table] = visible.token
        return db.cursor()

    def cursor_over(self, *tables: str) -> duckdb.DuckDBPyConnection:
        """A cursor on this lake's DuckDB whose views show the current version of `tables`, for a
        client that writes its own SQL over the lake in place (Great Expectations through SQLAlchemy)."""
        return self._cursor(" ".join(tables))

    def _run(self, sql: str, params: dict | None = None):
        cursor = self._cursor(sql)
        try:
            return cursor, cursor.execute(sql, params) if params else cursor.execute(sql)
        except duckdb.Error as exc:
            cursor.close()
            raise SiloError(f"silo {self.name}: {exc}") from exc

    def _fetchone(self, sql: str) -> tuple:
        """One row of a statement that names its files itself (no views needed)."""
        cursor = self._connection().cursor()
        try:
            return cursor.execute(sql).fetchone()
        except duckdb.Error as exc:
            raise SiloError(f"silo {self.name}: {exc}") from exc
        finally:
            cursor.close()

    # -- Connector ------------------------------------------------------------------------------

    def schema(self, table: str) -> pa.Schema:
        visible = self._require(table)

        def read() -> pa.Schema:
            if visible.delta is None:
                return pq.read_schema(visible.paths[0], filesystem=self._fs)
            cursor = self._connection().cursor()
            try:
                return cursor.execute(f"SELECT * FROM {self._relation(visible)} LIMIT 0").to_arrow_table().schema
            finally:
                cursor.close()

        with named_errors(self.name, f"reading the schema of {table}"):
            return self._metadata.value(table, visible.token, "schema", read)

    def row_count(self, table: str) -> int:
        visible = self._require(table)

        def count() -> int:
            if visible.delta is None:
                return sum(pq.ParquetFile(self._fs.open_input_file(p)).metadata.num_rows for p in visible.paths)
            if visible.delta.rows is not None:
                return visible.delta.rows
            return int(self._fetchone(f"SELECT count(*) FROM {self._relation(visible)}")[0])

        with named_errors(self.name, f"counting the rows of {table}"):
            return self._metadata.value(table, visible.token, "rows", count)

    def _size(self, visible: TableVersion) -> int:
        def size() -> int:
            if visible.delta is not None:
                return visible.delta.bytes
            return sum(info.size for info in self._fs.get_file_info(list(visible.paths)))

        with named_errors(self.name, f"sizing {visible.table}"):
            return self._metadata.value(visible.table, visible.token, "bytes", size)

    def statistics(self, table: str) -> TableStats:
        visible = self._require(table)
        schema = self.schema(table)

        def compute() -> TableStats:
            row = self._fetchone(stats_sql(self._relation(visible), schema, quote_ident))
            return stats_from_row(table, schema, row, self._size(visible))

        return self._metadata.value(table, visible.token, "statistics", compute)

    def column_statistics(self, table: str) -> TableStatistics:
        """Rows from the Delta log's statistics (or the Parquet footers); distinct values over the
        version's files, counted in small tables and estimated by DuckDB's HyperLogLog in large ones."""
        visible = self._require(table)
        schema, rows = self.schema(table), self.row_count(table)

        def compute() -> TableStatistics:
            row = self._fetchone(distinct_sql(self._relation(visible), schema, quote_ident, exact=rows <= EXACT_DISTINCT_ROWS))
            return TableStatistics(rows=rows, distinct={f.name: int(row[1 + i]) for i, f in enumerate(schema)})

        return self._metadata.value(table, visible.token, "column_statistics", compute)

    def estimate_rows(self, sql: str, params: dict | None = None) -> int | None:
        try:
            cursor, result = self._run(f"EXPLAIN (FORMAT JSON) {sql}", params)
        except SiloError:
            return None
        try:
            return duckdb_estimate(result.fetchone()[1])
        finally:
            cursor.close()

    def _stream(self, sql: str, batch_rows: int, params: dict | None = None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        reader, close = duckdb_stream(self._cursor(sql), sql, params, batch_rows, self.name)

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                with named_errors(self.name, "streaming a fragment"):
                    yield from reader
            finally:
                close()

        return reader.schema, ended_with(batches(), close)

    # -- writes ---------------------------------------------------------------------------------

    def _write(self, table: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch], annotations: dict | None) -> tuple[int, int]:
        """Vacuum `table`, then replace it with `batches` in one Delta commit; returns (rows, version).
        Vacuuming first keeps the write the table's latest commit (a vacuum commits too), so the
        version a write reports is the one readers see until the next write."""
        silo_table_name(self.name, table)
        if self._pins:
            raise SiloError(f"silo {self.name}: a connector reading pinned versions is read-only; write through the lake itself")
        if self.table_format(table) != DELTA:
            raise SiloError(
                f"silo {self.name}: table {table} is declared parquet in silos.yaml: fedlake writes Delta tables "
                "only; a plain Parquet table is written by its own tool"
            )
        self.vacuum(table)
        with named_errors(self.name, f"writing {table}"):
            try:
                rows, version = self._delta.write(table, schema, batches, annotations)
            except DeltaError as exc:
                raise SiloError(f"silo {self.name}: writing {table} failed, nothing was committed: {exc}") from exc
            finally:
                self._metadata.written(table)
        return rows, version

    def vacuum(self, table: str) -> list[str]:
        """Remove the files of `table` that no version within the retention period names (replaced
        versions, failed and killed writes). A lake this process may not clean is still readable,
        so a failure only warns; the next write tries again."""
        try:
            removed = self._delta.vacuum(table)
            self._discard_partial_uploads(table)
        except (OSError, DeltaError) as exc:
            log.warning("silo %s: could not vacuum %s: %s", self.name, table, exc)
            return []
        if removed:
            log.info("silo %s: vacuumed %d files of %s", self.name, len(removed), table)
        return removed

    def materialize(self, table: str, sql: str, annotations: dict | None = None, params: dict | None = None) -> MaterializedTable:
        silo_table_name(self.name, table)
        reader, close = duckdb_stream(self._cursor(sql), sql, params, DEFAULT_BATCH_ROWS, self.name)
        try:
            rows, version = self._write(table, reader.schema, reader, annotations)
        finally:
            close()
        return MaterializedTable(self.name, table, self.schema(table), rows, self._size(self._require(table)), version)

    def annotations(self, table: str) -> dict | None:
        visible = self._require(table)
        if visible.delta is None:
            return None
        with named_errors(self.name, f"reading what was recorded with {table}"):
            try:
                return self._metadata.value(
                    table, visible.token, "annotations", lambda: self._delta.annotations(table, visible.delta.version)
                )
            except DeltaError as exc:
                raise SiloError(f"silo {self.name}: reading the Delta log of {table} failed: {exc}") from None

    def load(self, table: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
        return self._write(table, schema, batches, None)[0]

    def drop(self, table: str) -> None:
        silo_table_name(self.name, table)
        with named_errors(self.name, f"dropping {table}"):
            self._fs.delete_dir_contents(self._path(table), missing_dir_ok=True)
            try:
                self._fs.delete_dir(self._path(table))
            except FileNotFoundError:
                pass
        self._metadata.written(table)

    def close(self) -> None:
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None
                self._views = {}
