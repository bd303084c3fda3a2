"""The governed zone's audit ledger, as a Dagster resource (for the chain check and its asset)."""

from __future__ import annotations

import dagster as dg

from fedlake.audit import Ledger, open_ledger


class LedgerResource(dg.ConfigurableResource):
    location: str  # a DuckDB file (local) or a PostgreSQL DSN (prod)

    def open(self) -> Ledger:
        return open_ledger(self.location)
