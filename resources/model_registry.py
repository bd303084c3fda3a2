"""The model registry, as a Dagster resource: versions, cards and the champion of every model."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from fedlake.learning.registry import ModelRegistry


class ModelRegistryResource(dg.ConfigurableResource):
    """Model versions live in the governed zone's folder; `truth_dir` holds the demo bank's ground
    truth (outside every silo), used only to score the oracle baseline where one exists."""

    root: str
    truth_dir: str = ""

    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.root)

    def truth(self, table: str) -> Path | None:
        path = Path(self.truth_dir) / f"{table}.parquet" if self.truth_dir else None
        return path if path and path.exists() else None
