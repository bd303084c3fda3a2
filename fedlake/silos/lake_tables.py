"""How a lake stores a table, and which version of it a read sees.

Every table fedlake writes is a Delta table; a source table that another tool writes as a plain
folder of Parquet files is declared `parquet` in silos.yaml. A read pins one version: a Delta
snapshot, or a plain folder's listing (its files, sizes and times).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

import pyarrow.fs as pafs

from fedlake.catalog import TABLE_FORMATS
from fedlake.errors import SiloError
from fedlake.silos.delta import DELTA_LOG, DeltaSnapshot, delta_relation

DELTA, PARQUET = TABLE_FORMATS


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class TableVersion:
    """The version of a table a read sees: a Delta snapshot, or a plain folder's Parquet files."""

    table: str
    token: Hashable  # changes with the table: (Delta table id, version), or the folder's files, sizes and times
    delta: DeltaSnapshot | None
    paths: tuple[str, ...] = ()  # a plain folder's files, as paths inside the lake's filesystem

    @property
    def version(self) -> int | None:
        return self.delta.version if self.delta else None

    def relation(self, table_uri: str, file_uri: Callable[[str], str]) -> str:
        """DuckDB's name for exactly this version of the table."""
        if self.delta is not None:
            return delta_relation(table_uri, self.delta.version)
        return f"read_parquet([{', '.join(sql_string(file_uri(p)) for p in self.paths)}])"


def has_delta_log(fs: pafs.FileSystem, folder: str) -> bool:
    return fs.get_file_info(posixpath.join(folder, DELTA_LOG)).type == pafs.FileType.Directory


def parquet_files(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(folder, allow_not_found=True, recursive=False)
    infos = [i for i in fs.get_file_info(selector) if i.type == pafs.FileType.File and i.path.endswith(".parquet")]
    return sorted(infos, key=lambda i: i.path)


def plain_version(silo: str, fs: pafs.FileSystem, table: str, folder: str) -> TableVersion | None:
    """A declared plain Parquet table as one listing of its folder; a folder with a Delta log is
    refused: reading its files as they lie would mix versions."""
    if has_delta_log(fs, folder):
        raise SiloError(
            f"silo {silo}: table {table} is declared parquet in silos.yaml but holds a Delta log "
            f"({DELTA_LOG}/); reading its files as they lie would mix versions: declare it delta"
        )
    infos = parquet_files(fs, folder)
    token = tuple((i.path, i.size, i.mtime_ns) for i in infos)
    return TableVersion(table, token, None, tuple(i.path for i in infos)) if infos else None


def check_pins(silo: str, formats: Mapping[str, str], versions: Mapping[str, int]) -> None:
    for table, version in versions.items():
        if formats.get(table, DELTA) != DELTA or not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise SiloError(f"silo {silo}: cannot pin {table} at {version!r}: only a Delta table's version (0, 1, ...) can be")
