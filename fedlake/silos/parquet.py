"""The local lake: a folder on the silo's own disk, of Delta tables (and declared plain Parquet ones)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pyarrow.fs as pafs

from fedlake.silos.delta import DEFAULT_RETENTION_HOURS
from fedlake.silos.lake import LakeConnector

# How delta-rs (object_store) names a file it is still writing on a local disk: `<final name>#<n>`,
# renamed into place when complete. A killed writer leaves it behind, and no vacuum looks at it.
_IN_PROGRESS = re.compile(r".+#\d+$")


class ParquetConnector(LakeConnector):
    kind = "parquet"

    def __init__(
        self,
        name: str,
        region: str,
        root: str | Path,
        formats: Mapping[str, str] | None = None,
        retention_hours: float = DEFAULT_RETENTION_HOURS,
    ):
        root = Path(root).expanduser().resolve()  # made by the first write, never by opening: a wrong path stays visible
        super().__init__(name, region, pafs.LocalFileSystem(), root.as_posix(), root.as_posix(), formats, retention_hours)

    def _discard_partial_uploads(self, table: str) -> None:
        """Remove the files that writers killed before the retention period were still writing
        (a younger one may belong to a write still running)."""
        cutoff = self._delta.retention_cutoff().timestamp()
        for path in Path(self._path(table)).glob("*#*"):
            if _IN_PROGRESS.fullmatch(path.name) and path.stat().st_mtime <= cutoff:
                path.unlink(missing_ok=True)
