"""Writes in progress on a lake, and the sweep that removes what killed writers left behind.

A write goes to a fresh version folder of its table, which only the table's `_current` pointer
publishes. Before its first byte the writer registers the version under the lake's staging prefix
(`_staging/<table>/<version>.json`: host, process, when it began) and drops the registration once the
pointer names the version. So a version folder that the pointer does not name and that no live
writer registered is an orphan: what a killed write left (a partial Parquet file), or a replaced
version whose deletion was interrupted.

The sweep runs when a connector starts and before each write. A registered writer counts as gone
when it ran on this host and its process no longer exists (or its pid now names another process),
or when it ran on another host and registered more than GRACE_SECONDS ago
(FEDLAKE_STAGING_GRACE_SECONDS, 24 h by default): a process on another host cannot be probed, so
only age tells there. A writer whose registration was swept refuses to publish.

Data is written where it stays rather than staged elsewhere and moved: on S3 a move copies every
byte (CopyObject, at most 5 GB per object). Table formats (Iceberg, Delta Lake) do the same: data
files are written in place, a commit publishes them, orphans are removed by age.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import psutil
import pyarrow.fs as pafs

STAGING = "_staging"
VERSION_PREFIX = "v-"
POINTER_DRAFT_PREFIX = "_pointer-"
GRACE_SECONDS = float(os.environ.get("FEDLAKE_STAGING_GRACE_SECONDS", str(24 * 3600)))

log = logging.getLogger("fedlake.silos")


@dataclass(frozen=True)
class Writer:
    """The process that registered a write: enough to tell later whether it still runs."""

    host: str
    pid: int
    pid_started: float
    started: float

    @classmethod
    def this_process(cls) -> Writer:
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time(), time.time())

    def gone(self, now: float, grace: float) -> bool:
        if self.host != socket.gethostname():
            return now - self.started > grace
        try:
            process = psutil.Process(self.pid)
            return process.status() == psutil.STATUS_ZOMBIE or abs(process.create_time() - self.pid_started) > 0.01
        except psutil.NoSuchProcess:
            return True


class Staging:
    """The registrations of one lake's writes in progress, and the sweep of its orphans."""

    def __init__(
        self,
        fs: pafs.FileSystem,
        base: str,
        grace_seconds: float | None = None,
        discard_partial: Callable[[str], None] | None = None,
    ):
        self._fs = fs
        self._base = base
        self.grace_seconds = GRACE_SECONDS if grace_seconds is None else grace_seconds
        # what a killed writer left that no listing shows (on S3, its unfinished multipart upload)
        self._discard_partial = discard_partial

    def _registration(self, table: str, version: str) -> str:
        return posixpath.join(self._base, STAGING, table, f"{version}.json")

    def register(self, table: str, version: str) -> None:
        self._fs.create_dir(posixpath.join(self._base, STAGING, table), recursive=True)
        with self._fs.open_output_stream(self._registration(table, version)) as f:
            f.write(json.dumps(asdict(Writer.this_process())).encode())

    def registered(self, table: str, version: str) -> bool:
        return self._fs.get_file_info(self._registration(table, version)).type == pafs.FileType.File

    def release(self, table: str, version: str) -> None:
        self._delete_file(self._registration(table, version))

    def _writer(self, table: str, version: str, now: float) -> Writer | None:
        """The live writer of a version, or None if none registered it or it is gone."""
        path = self._registration(table, version)
        try:
            with self._fs.open_input_stream(path) as f:
                writer = Writer(**json.loads(f.read().decode()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            # a registration cut short: only its age can tell
            info = self._fs.get_file_info(path)
            if info.type != pafs.FileType.File:
                return None
            started = info.mtime.timestamp() if info.mtime else 0.0
            writer = Writer("", -1, 0.0, started)
        return None if writer.gone(now, self.grace_seconds) else writer

    def sweep(self, table: str, current: Callable[[str], str | None]) -> list[str]:
        """Remove the versions of `table` that neither its pointer nor a live writer holds, and the
        registrations of gone writers; returns the versions removed. In a table without a pointer
        only registered versions are candidates: its other folders may be data fedlake did not write."""
        now = time.time()
        table_dir = posixpath.join(self._base, table)
        versions, drafts = set(), set()
        for info in self._fs.get_file_info(pafs.FileSelector(table_dir, allow_not_found=True)):
            name = posixpath.basename(info.path)
            if info.type == pafs.FileType.Directory and name.startswith(VERSION_PREFIX):
                versions.add(name)
            elif info.type == pafs.FileType.File and name.startswith(POINTER_DRAFT_PREFIX):
                drafts.add(name[len(POINTER_DRAFT_PREFIX):])
        registrations = {
            posixpath.basename(info.path)[: -len(".json")]
            for info in self._fs.get_file_info(pafs.FileSelector(posixpath.join(self._base, STAGING, table), allow_not_found=True))
            if info.type == pafs.FileType.File and info.path.endswith(".json")
        }
        # a folder without a pointer may be a lake fedlake did not write: only registered versions are fedlake's there
        candidates = registrations | (versions | drafts if current(table) is not None else set())
        removed = []
        for version in sorted(candidates):
            if self._writer(table, version, now) is not None:
                continue
            # read after the registration: a writer publishes before it releases, so a version
            # released a moment ago is named here
            if current(table) == version:
                self.release(table, version)
                continue
            if version in versions:
                self._fs.delete_dir_contents(posixpath.join(table_dir, version), missing_dir_ok=True)
                self._delete_dir(posixpath.join(table_dir, version))
                removed.append(version)
            if self._discard_partial is not None:
                self._discard_partial(posixpath.join(table_dir, version))
            self._delete_file(posixpath.join(table_dir, POINTER_DRAFT_PREFIX + version))
            self.release(table, version)
        if removed and current(table) is None and not self._fs.get_file_info(pafs.FileSelector(table_dir, allow_not_found=True)):
            self._delete_dir(table_dir)  # what a killed first write of the table left
        return removed

    def sweep_lake(self, current: Callable[[str], str | None]) -> dict[str, list[str]]:
        """Sweep every table of the lake (and every table a registration names)."""
        tables = {
            posixpath.basename(info.path)
            for folder in (self._base, posixpath.join(self._base, STAGING))
            for info in self._fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
            if info.type == pafs.FileType.Directory and not posixpath.basename(info.path).startswith("_")
        }
        swept = {table: self.sweep(table, current) for table in sorted(tables)}
        return {table: versions for table, versions in swept.items() if versions}

    def _delete_file(self, path: str) -> None:
        try:
            self._fs.delete_file(path)
        except FileNotFoundError:
            pass

    def _delete_dir(self, path: str) -> None:
        try:
            self._fs.delete_dir(path)
        except FileNotFoundError:
            pass
