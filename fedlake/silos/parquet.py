"""The local Parquet lake: a folder on the silo's own disk."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

from fedlake.silos.lake import LakeConnector


class ParquetConnector(LakeConnector):
    kind = "parquet"

    def __init__(self, name: str, region: str, root: str | Path):
        root = Path(root).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(name, region, pafs.LocalFileSystem(), root.as_posix(), root.as_posix())
