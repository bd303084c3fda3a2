"""A Parquet lake, local or on S3, queried in place by an embedded DuckDB next to it.

Tables are folders. A table that fedlake writes is versioned: each write goes to a fresh version
folder, registered as in progress under the lake's `_staging/` prefix (see lake_staging), and
becomes visible only when the small `_current` pointer is replaced, so a failed or killed write
leaves the previous version (or nothing) and never a half-written table; what a killed write left
is swept at the next write or connector start. A folder of plain Parquet files without a pointer
(a lake fedlake did not write) is read as it is.

A table's metadata (files, schema, rows, statistics) is cached per version: the pointer names it,
and a version folder never changes once published.
"""

from __future__ import annotations

import json
import posixpath
import re
import threading
import uuid
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fedlake.errors import SiloError
from fedlake.silos.base import (
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
from fedlake.silos.lake_staging import POINTER_DRAFT_PREFIX, VERSION_PREFIX, Staging, log
from fedlake.silos.metadata import MetadataCache

POINTER = "_current"
ANNOTATIONS = "_fedlake.json"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class TableVersion:
    """The visible version of a table: a token that changes with it, and its Parquet files."""

    table: str
    token: Hashable  # the pointer's version; for a folder fedlake did not write, its files, sizes and times
    version: str | None
    files: tuple[str, ...]


class LakeConnector(Connector):
    """Shared by the local Parquet lake and the S3 lake; they differ only in filesystem and URIs."""

    def __init__(self, name: str, region: str, fs: pafs.FileSystem, base: str, uri_prefix: str):
        super().__init__(name, region)
        self._fs = fs
        self._base = base.rstrip("/")  # path of the lake root inside `fs`
        self._uri_prefix = uri_prefix.rstrip("/")  # how DuckDB names the same root
        self._db: duckdb.DuckDBPyConnection | None = None
        self._db_lock = threading.Lock()
        self._views: dict[str, Hashable] = {}  # the version each table's view shows
        self._metadata: MetadataCache[tuple[str, ...]] = MetadataCache(self._uri_prefix)
        self._staging = Staging(fs, self._base, discard_partial=self._discard_partial_uploads)
        self._sweep_lake()

    # -- storage layout -------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return posixpath.join(self._base, *parts)

    def _uri(self, *parts: str) -> str:
        return posixpath.join(self._uri_prefix, *parts)

    def _file_uri(self, path: str) -> str:
        return self._uri(posixpath.relpath(path, self._base))

    def _current_version(self, table: str) -> str | None:
        try:
            with self._fs.open_input_stream(self._path(table, POINTER)) as f:
                return f.read().decode().strip()
        except FileNotFoundError:
            return None

    def _parquet_files(self, folder: str, recursive: bool) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(folder, allow_not_found=True, recursive=recursive)
        infos = [i for i in self._fs.get_file_info(selector) if i.type == pafs.FileType.File and i.path.endswith(".parquet")]
        return sorted(infos, key=lambda i: i.path)

    def _visible(self, table: str) -> TableVersion | None:
        """The table's visible version: one pointer read, or for a folder fedlake did not write, one listing."""
        version = self._current_version(table)
        if version is not None:
            files = self._metadata.value(
                table, version, "files",
                lambda: tuple(i.path for i in self._parquet_files(self._path(table, version), recursive=True)),
            )
            token: Hashable = version
        else:
            infos = self._parquet_files(self._path(table), recursive=False)
            files = tuple(i.path for i in infos)
            token = tuple((i.path, i.size, i.mtime_ns) for i in infos)
        return TableVersion(table, token, version, files) if files else None

    def _data_files(self, table: str) -> list[str]:
        """Paths (inside fs) of the Parquet files that make up the table's visible version."""
        with named_errors(self.name, f"reading table {table}"):
            visible = self._visible(table)
        return list(visible.files) if visible else []

    def _fetch_tables(self) -> tuple[str, ...]:
        tables = []
        for info in self._fs.get_file_info(pafs.FileSelector(self._base, allow_not_found=True)):
            name = posixpath.basename(info.path)
            if info.type == pafs.FileType.Directory and not name.startswith("_") and self._visible(name):
                tables.append(name)
        return tuple(sorted(tables))

    def list_tables(self) -> list[str]:
        with named_errors(self.name, "listing tables"):
            return list(self._metadata.listing(self._fetch_tables))

    def _require(self, table: str) -> TableVersion:
        with named_errors(self.name, f"reading table {table}"):
            visible = self._visible(table)
        if visible is None:
            raise SiloError(f"silo {self.name}: no table '{table}' (tables: {', '.join(self.list_tables())})")
        return visible

    def _relation(self, visible: TableVersion) -> str:
        """DuckDB's name for exactly this version's files."""
        return f"read_parquet([{', '.join(_sql_string(self._file_uri(p)) for p in visible.files)}])"

    # -- DuckDB next to the lake ----------------------------------------------------------------

    def _configure(self, db: duckdb.DuckDBPyConnection) -> None:
        """Kind-specific set-up (the S3 lake loads httpfs and its credentials)."""

    def _discard_partial_uploads(self, folder: str) -> None:
        """Remove what a killed writer left under `folder` that no listing shows (S3: its multipart uploads)."""

    def _connection(self) -> duckdb.DuckDBPyConnection:
        with self._db_lock:
            if self._db is None:
                db = duckdb.connect(config={"autoinstall_known_extensions": False})
                self._configure(db)
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
        with named_errors(self.name, f"reading the schema of {table}"):
            return self._metadata.value(
                table, visible.token, "schema", lambda: pq.read_schema(visible.files[0], filesystem=self._fs)
            )

    def row_count(self, table: str) -> int:
        visible = self._require(table)

        def count() -> int:
            return sum(pq.ParquetFile(self._fs.open_input_file(p)).metadata.num_rows for p in visible.files)

        with named_errors(self.name, f"counting the rows of {table}"):
            return self._metadata.value(table, visible.token, "rows", count)

    def _size(self, visible: TableVersion) -> int:
        def size() -> int:
            return sum(info.size for info in self._fs.get_file_info(list(visible.files)))

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
        """Rows from the Parquet footers; distinct values over the version's files, counted in small
        tables and estimated by DuckDB's HyperLogLog in large ones."""
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

    def _new_version(self) -> str:
        return VERSION_PREFIX + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]

    def _sweep_lake(self) -> None:
        """At start: remove what killed writes left anywhere in the lake. A lake this process may
        not clean (read-only credentials, an endpoint down) is still readable, so this only warns."""
        try:
            swept = self._staging.sweep_lake(self._current_version)
        except OSError as exc:
            log.warning("silo %s: could not sweep abandoned writes: %s", self.name, exc)
            return
        for table, versions in swept.items():
            log.info("silo %s: removed abandoned versions of %s: %s", self.name, table, ", ".join(versions))

    def _begin(self, table: str) -> str:
        """Sweep the table, then register a new version of it as in progress."""
        removed = self._staging.sweep(table, self._current_version)
        if removed:
            log.info("silo %s: removed abandoned versions of %s: %s", self.name, table, ", ".join(removed))
        version = self._new_version()
        self._staging.register(table, version)
        self._fs.create_dir(self._path(table, version), recursive=True)
        return version

    def _commit(self, table: str, version: str) -> None:
        """Make `version` the visible one, then remove the version it replaced."""
        if not self._staging.registered(table, version):
            raise SiloError(
                f"silo {self.name}: the write of {table} outlived its registration (swept after "
                f"{self._staging.grace_seconds:.0f}s as abandoned); nothing was published"
            )
        previous = self._current_version(table)
        draft = self._path(table, POINTER_DRAFT_PREFIX + version)
        with self._fs.open_output_stream(draft) as f:
            f.write(version.encode())
        self._fs.move(draft, self._path(table, POINTER))
        self._staging.release(table, version)
        self._metadata.written(table)
        if previous and previous != version:
            try:
                self._fs.delete_dir(self._path(table, previous))
            except OSError as exc:  # published already: the next sweep removes what is left
                log.warning("silo %s: could not remove the replaced version %s/%s: %s", self.name, table, previous, exc)

    def _abandon(self, table: str, version: str) -> None:
        try:
            self._fs.delete_dir_contents(self._path(table, version), missing_dir_ok=True)
            self._fs.delete_dir(self._path(table, version))
        except FileNotFoundError:
            pass
        try:
            self._fs.delete_file(self._path(table, POINTER_DRAFT_PREFIX + version))
        except FileNotFoundError:
            pass
        self._staging.release(table, version)
        if self._current_version(table) is None and not self._parquet_files(self._path(table), recursive=True):
            try:
                self._fs.delete_dir(self._path(table))
            except FileNotFoundError:
                pass

    def _written(self, table: str, write) -> None:
        """Run `write(version)` into a new version of `table` and publish it, or leave nothing."""
        with named_errors(self.name, f"writing {table}"):
            version = self._begin(table)
            try:
                write(version)
                self._commit(table, version)
            except BaseException:
                try:
                    self._abandon(table, version)
                except OSError as exc:  # the failure that matters is the write's; the sweep retries
                    log.warning("silo %s: could not remove the failed write %s/%s: %s", self.name, table, version, exc)
                raise

    def materialize(self, table: str, sql: str, annotations: dict | None = None, params: dict | None = None) -> MaterializedTable:
        silo_table_name(self.name, table)
        rows = 0

        def write(version: str) -> None:
            nonlocal rows
            target = self._uri(table, version, "part-00000.parquet")
            cursor, result = self._run(f"COPY ({sql}) TO {_sql_string(target)} (FORMAT parquet, COMPRESSION zstd)", params)
            try:
                rows = int(result.fetchone()[0])
            finally:
                cursor.close()
            if annotations is not None:
                with self._fs.open_output_stream(self._path(table, version, ANNOTATIONS)) as f:
                    f.write(json.dumps(annotations).encode())

        self._written(table, write)
        visible = self._require(table)
        return MaterializedTable(self.name, table, self.schema(table), rows, self._size(visible))

    def annotations(self, table: str) -> dict | None:
        visible = self._require(table)
        if visible.version is None:
            return None

        def read() -> dict | None:
            try:
                with self._fs.open_input_stream(self._path(table, visible.version, ANNOTATIONS)) as f:
                    return json.loads(f.read().decode())
            except FileNotFoundError:
                return None

        with named_errors(self.name, f"reading what was recorded with {table}"):
            return self._metadata.value(table, visible.token, "annotations", read)

    def load(self, table: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
        silo_table_name(self.name, table)
        rows = 0

        def write(version: str) -> None:
            nonlocal rows
            target = self._path(table, version, "part-00000.parquet")
            with pq.ParquetWriter(target, schema, filesystem=self._fs, compression="zstd") as writer:
                for batch in batches:
                    writer.write_batch(batch)
                    rows += batch.num_rows

        self._written(table, write)
        return rows

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
