"""A Parquet lake, local or on S3, queried in place by an embedded DuckDB next to it.

Tables are folders. A table that fedlake writes is versioned: each write goes to a fresh version
folder and becomes visible only when the small `_current` pointer is replaced, so a failed write
leaves the previous version (or nothing) and never a half-written table. A folder of plain Parquet
files without a pointer (a lake fedlake did not write) is read as it is.
"""

from __future__ import annotations

import json
import posixpath
import re
import threading
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fedlake.errors import SiloError
from fedlake.silos.base import (
    Connector,
    MaterializedTable,
    TableStats,
    check_table_name,
    duckdb_estimate,
    duckdb_stream,
    ended_with,
    stats_from_row,
    stats_sql,
)

POINTER = "_current"
ANNOTATIONS = "_fedlake.json"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class LakeConnector(Connector):
    """Shared by the local Parquet lake and the S3 lake; they differ only in filesystem and URIs."""

    def __init__(self, name: str, region: str, fs: pafs.FileSystem, base: str, uri_prefix: str):
        super().__init__(name, region)
        self._fs = fs
        self._base = base.rstrip("/")  # path of the lake root inside `fs`
        self._uri_prefix = uri_prefix.rstrip("/")  # how DuckDB names the same root
        self._db: duckdb.DuckDBPyConnection | None = None
        self._db_lock = threading.Lock()

    # -- storage layout -------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return posixpath.join(self._base, *parts)

    def _uri(self, *parts: str) -> str:
        return posixpath.join(self._uri_prefix, *parts)

    def _current_version(self, table: str) -> str | None:
        try:
            with self._fs.open_input_stream(self._path(table, POINTER)) as f:
                return f.read().decode().strip()
        except (FileNotFoundError, OSError):
            return None

    def _data_files(self, table: str) -> list[str]:
        """Paths (inside fs) of the Parquet files that make up the table's visible version."""
        version = self._current_version(table)
        folder = self._path(table, version) if version else self._path(table)
        selector = pafs.FileSelector(folder, allow_not_found=True, recursive=version is not None)
        files = [
            info.path
            for info in self._fs.get_file_info(selector)
            if info.type == pafs.FileType.File and info.path.endswith(".parquet")
        ]
        return sorted(files)

    def _file_uri(self, path: str) -> str:
        return self._uri(posixpath.relpath(path, self._base))

    def list_tables(self) -> list[str]:
        infos = self._fs.get_file_info(pafs.FileSelector(self._base, allow_not_found=True))
        tables = []
        for info in infos:
            name = posixpath.basename(info.path)
            if info.type == pafs.FileType.Directory and not name.startswith("_") and self._data_files(name):
                tables.append(name)
        return sorted(tables)

    def _require(self, table: str) -> list[str]:
        files = self._data_files(table)
        if not files:
            raise SiloError(f"silo {self.name}: no table '{table}' (tables: {', '.join(self.list_tables())})")
        return files

    # -- DuckDB next to the lake ----------------------------------------------------------------

    def _configure(self, db: duckdb.DuckDBPyConnection) -> None:
        """Kind-specific set-up (the S3 lake loads httpfs and its credentials)."""

    def _connection(self) -> duckdb.DuckDBPyConnection:
        with self._db_lock:
            if self._db is None:
                db = duckdb.connect(config={"autoinstall_known_extensions": False})
                self._configure(db)
                self._db = db
            return self._db

    def _cursor(self, sql: str) -> duckdb.DuckDBPyConnection:
        """A cursor whose views show the current version of every table `sql` may name."""
        db = self._connection()
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", sql))
        with self._db_lock:
            for table in self.list_tables():
                if table not in words:
                    continue
                files = ", ".join("'" + self._file_uri(p).replace("'", "''") + "'" for p in self._data_files(table))
                db.execute(f"CREATE OR REPLACE VIEW {quote_ident(table)} AS SELECT * FROM read_parquet([{files}])")
        return db.cursor()

    def _run(self, sql: str, params: dict | None = None):
        cursor = self._cursor(sql)
        try:
            return cursor, cursor.execute(sql, params) if params else cursor.execute(sql)
        except duckdb.Error as exc:
            cursor.close()
            raise SiloError(f"silo {self.name}: {exc}") from exc

    # -- Connector ------------------------------------------------------------------------------

    def schema(self, table: str) -> pa.Schema:
        files = self._require(table)
        return pq.read_schema(files[0], filesystem=self._fs)

    def row_count(self, table: str) -> int:
        return sum(pq.ParquetFile(self._fs.open_input_file(p)).metadata.num_rows for p in self._require(table))

    def _size(self, files: list[str]) -> int:
        return sum(info.size for info in self._fs.get_file_info(files))

    def statistics(self, table: str) -> TableStats:
        files = self._require(table)
        schema = self.schema(table)
        sql = stats_sql(quote_ident(table), schema, quote_ident)
        cursor, result = self._run(sql)
        try:
            row = result.fetchone()
        finally:
            cursor.close()
        return stats_from_row(table, schema, row, self._size(files))

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
                yield from reader
            finally:
                close()

        return reader.schema, ended_with(batches(), close)

    def _new_version(self) -> str:
        return "v-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]

    def _commit(self, table: str, version: str) -> None:
        """Make `version` the visible one, then remove the version it replaced."""
        previous = self._current_version(table)
        staging = self._path(table, f"_pointer-{uuid.uuid4().hex}")
        with self._fs.open_output_stream(staging) as f:
            f.write(version.encode())
        self._fs.move(staging, self._path(table, POINTER))
        if previous and previous != version:
            self._fs.delete_dir(self._path(table, previous))

    def _abandon(self, table: str, version: str) -> None:
        self._fs.delete_dir_contents(self._path(table, version), missing_dir_ok=True)
        try:
            self._fs.delete_dir(self._path(table, version))
        except (FileNotFoundError, OSError):
            pass
        if self._current_version(table) is None and not self._data_files(table):
            try:
                self._fs.delete_dir(self._path(table))
            except (FileNotFoundError, OSError):
                pass

    def materialize(self, table: str, sql: str, annotations: dict | None = None, params: dict | None = None) -> MaterializedTable:
        check_table_name(table)
        version = self._new_version()
        target = self._uri(table, version, "part-00000.parquet")
        self._fs.create_dir(self._path(table, version), recursive=True)
        try:
            cursor, result = self._run(f"COPY ({sql}) TO '{target}' (FORMAT parquet, COMPRESSION zstd)", params)
            try:
                rows = int(result.fetchone()[0])
            finally:
                cursor.close()
            if annotations is not None:
                with self._fs.open_output_stream(self._path(table, version, ANNOTATIONS)) as f:
                    f.write(json.dumps(annotations).encode())
            self._commit(table, version)
        except BaseException:
            self._abandon(table, version)
            raise
        files = self._data_files(table)
        return MaterializedTable(self.name, table, self.schema(table), rows, self._size(files))

    def annotations(self, table: str) -> dict | None:
        self._require(table)
        version = self._current_version(table)
        if version is None:
            return None
        try:
            with self._fs.open_input_stream(self._path(table, version, ANNOTATIONS)) as f:
                return json.loads(f.read().decode())
        except (FileNotFoundError, OSError):
            return None

    def load(self, table: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
        check_table_name(table)
        version = self._new_version()
        folder = self._path(table, version)
        self._fs.create_dir(folder, recursive=True)
        rows = 0
        try:
            with pq.ParquetWriter(
                posixpath.join(folder, "part-00000.parquet"), schema, filesystem=self._fs, compression="zstd"
            ) as writer:
                for batch in batches:
                    writer.write_batch(batch)
                    rows += batch.num_rows
            self._commit(table, version)
        except BaseException:
            self._abandon(table, version)
            raise
        return rows

    def drop(self, table: str) -> None:
        check_table_name(table)
        self._fs.delete_dir_contents(self._path(table), missing_dir_ok=True)
        try:
            self._fs.delete_dir(self._path(table))
        except (FileNotFoundError, OSError):
            pass

    def close(self) -> None:
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None
