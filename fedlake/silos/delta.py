"""Delta Lake tables in a lake: written with delta-rs, read by DuckDB's `delta` extension.

A write is one Delta commit: delta-rs writes the new Parquet files where they stay, then publishes
them by adding the next version to the table's `_delta_log`. A write that fails or is killed before
its commit leaves files that no version names; readers never see them. Old versions stay readable
(time travel) for the lake's retention period; after a commit, `vacuum` removes the files of
versions older than that and the files no version names (failed or killed writes) once they are
older than it too. A write must therefore finish within the retention period, Delta's own rule, or
a vacuum elsewhere could remove its files before it commits.

What fedlake records with a table (the lineage of its columns) travels in the commit itself, as the
commit's custom metadata, so a version and what fedlake knows about it can never disagree.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError

DELTA_LOG = "_delta_log"
ANNOTATIONS_KEY = "fedlake.annotations"
# Delta's own default (delta.deletedFileRetentionDuration): a week of versions to travel back to.
DEFAULT_RETENTION_HOURS = 168.0


@dataclass(frozen=True)
class DeltaSnapshot:
    """One version of a Delta table: what identifies it, and the URIs of its Parquet files."""

    table: str
    table_id: str  # changes when the table is dropped and created again, so versions never collide
    version: int
    files: tuple[str, ...]
    rows: int | None  # from the commit statistics delta-rs writes; None where a file has none
    bytes: int

    @property
    def token(self) -> Hashable:
        return (self.table_id, self.version)


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def delta_version(connector, table: str) -> int | None:
    """The Delta version of `table` a connector reads; None for a silo or table without versions
    (PostgreSQL, a plain Parquet folder)."""
    version = getattr(connector, "table_version", None)
    return version(table) if version is not None else None


def delta_relation(uri: str, version: int) -> str:
    """DuckDB's name for exactly one version of the Delta table at `uri` (the `delta` extension)."""
    return f"delta_scan({_sql_string(uri)}, version => {int(version)})"


class DeltaLake:
    """The Delta tables of one lake root, local (`/path`) or on S3 (`s3://bucket/prefix`)."""

    def __init__(self, root_uri: str, storage_options: dict[str, str] | None = None, retention_hours: float = DEFAULT_RETENTION_HOURS):
        self.root_uri = root_uri.rstrip("/")
        self.storage_options = storage_options or None
        self.retention_hours = float(retention_hours)

    def uri(self, table: str) -> str:
        return posixpath.join(self.root_uri, table)

    def _open(self, table: str, version: int | None = None) -> DeltaTable | None:
        try:
            return DeltaTable(self.uri(table), version=version, storage_options=self.storage_options)
        except TableNotFoundError:
            return None

    def snapshot(self, table: str, version: int | None = None) -> DeltaSnapshot | None:
        """The table's current version (or `version`, within the retention period); None if there
        is no Delta table there. A version that was vacuumed or never written raises DeltaError."""
        dt = self._open(table, version)
        if dt is None:
            return None
        actions = pa.table(dt.get_add_actions(flatten=True))
        records = actions.column("num_records").to_pylist() if "num_records" in actions.column_names else [None]
        rows = None if any(r is None for r in records) else int(sum(records))
        size = int(sum(actions.column("size_bytes").to_pylist())) if actions.num_rows else 0
        return DeltaSnapshot(table, dt.metadata().id, dt.version(), tuple(dt.file_uris()), rows, size)

    def versions(self, table: str) -> list[int]:
        """The versions whose commits are still in the log (time travel may reach them, until vacuumed)."""
        dt = self._open(table)
        return sorted(int(entry["version"]) for entry in dt.history()) if dt is not None else []

    def annotations(self, table: str, version: int) -> dict | None:
        """What fedlake stored with the write that made `version`'s data: the latest commit up to
        `version` that is not a vacuum (a vacuum commits too, and changes no rows)."""
        dt = self._open(table)
        if dt is None:
            return None
        for entry in dt.history():  # newest first
            if int(entry.get("version", -1)) <= version and not str(entry.get("operation", "")).startswith("VACUUM"):
                text = entry.get(ANNOTATIONS_KEY)
                return json.loads(text) if text else None
        return None

    def write(self, table: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch], annotations: dict | None) -> tuple[int, int]:
        """Replace the table's content (and schema) with `batches` in one commit; returns the rows
        written and the new version. An error raised by `batches` itself is raised as it was, not
        as the text delta-rs wraps it in."""
        rows = 0
        failure: list[BaseException] = []

        def counted() -> Iterator[pa.RecordBatch]:
            nonlocal rows
            try:
                for batch in batches:
                    rows += batch.num_rows
                    yield batch
            except BaseException as exc:
                failure.append(exc)
                raise

        metadata = {ANNOTATIONS_KEY: json.dumps(annotations)} if annotations is not None else None
        try:
            write_deltalake(
                self.uri(table),
                pa.RecordBatchReader.from_batches(schema, counted()),
                mode="overwrite",
                schema_mode="overwrite",
                storage_options=self.storage_options,
                commit_properties=CommitProperties(custom_metadata=metadata),
                writer_properties=WriterProperties(compression="ZSTD"),  # a quarter smaller than snappy, as fast here
            )
        except BaseException:
            if failure:
                raise failure[0] from None
            raise
        dt = self._open(table)
        assert dt is not None, "a committed table has a log"
        return rows, dt.version()

    def vacuum(self, table: str) -> list[str]:
        """Remove files that no version within the retention period names: replaced versions, and
        what failed or killed writes left once it is older than the retention period."""
        dt = self._open(table)
        if dt is None:
            return []
        return dt.vacuum(
            retention_hours=int(self.retention_hours),
            dry_run=False,
            enforce_retention_duration=False,  # the retention period is the lake's, set in silos.yaml
            full=True,
        )

    def retention_cutoff(self) -> datetime:
        return datetime.now(timezone.utc) - timedelta(hours=self.retention_hours)


__all__ = ["DELTA_LOG", "DeltaError", "DeltaLake", "DeltaSnapshot", "DEFAULT_RETENTION_HOURS", "delta_relation", "delta_version"]
