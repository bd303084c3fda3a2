"""The governed zone, as a Dagster resource: where compliant, joined data lives."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from fedlake.silos import Connector, governed_connector

GOVERNED = "governed"


class GovernedZoneResource(dg.ConfigurableResource):
    """A Parquet lake (`path`, local) or a PostgreSQL schema (`dsn`, prod) in the governed region."""

    region: str
    home: str
    path: str = ""
    dsn: str = ""
    db_schema: str = "governed"

    _connector: Connector | None = PrivateAttr(default=None)

    def connector(self) -> Connector:
        if self._connector is None:
            settings = {"path": self.path} if not self.dsn else {"dsn": self.dsn, "schema": self.db_schema}
            self._connector = governed_connector(settings, self.region, Path(self.home))
        return self._connector

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._connector is not None:
            self._connector.close()
            self._connector = None
