"""A dbt-duckdb plugin that loads DuckDB extensions from their installed Python wheels.

dbt-duckdb's own `extensions:` setting runs `INSTALL name`, which downloads from DuckDB's
repository; fedlake must never need the network, so the extension comes from the pinned
`duckdb-extension-<name>` wheel instead, before a model needs it (delta_scan).
"""

from __future__ import annotations

import duckdb_extensions
from dbt.adapters.duckdb.plugins import BasePlugin


class Plugin(BasePlugin):
    def initialize(self, plugin_config: dict) -> None:
        self._extensions = list(plugin_config.get("extensions") or [])

    def configure_connection(self, conn) -> None:
        for name in self._extensions:
            try:
                duckdb_extensions.import_extension(name, con=conn)
            except ModuleNotFoundError as exc:
                raise RuntimeError(
                    f"DuckDB extension '{name}' is not installed as a wheel (duckdb-extension-{name}); "
                    "fedlake loads extensions only from installed wheels, never from the network"
                ) from exc
            conn.load_extension(name)
