"""Dagster resources, one per silo kind: each opens the engine's connector for its silo."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import dagster as dg
from pydantic import PrivateAttr

from fedlake.silos import Connector, connector_for


class SiloResource(dg.ConfigurableResource):
    """A silo as Dagster sees it: its name, region, and how to reach it in this deployment."""

    silo: str
    region: str
    home: str  # the data folder relative paths resolve against

    kind: ClassVar[str]
    _connector: Connector | None = PrivateAttr(default=None)

    def _settings(self) -> dict[str, str]:
        raise NotImplementedError

    def connector(self) -> Connector:
        """The run's connector to this silo, opened on first use and closed after the run."""
        if self._connector is None:
            self._connector = connector_for(self.kind, self.silo, self.region, self._settings(), Path(self.home))
        return self._connector

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._connector is not None:
            self._connector.close()
            self._connector = None


class PostgresSiloResource(SiloResource):
    """A PostgreSQL silo: a DSN (prod), or an embedded server whose data folder is named (local)."""

    kind: ClassVar[str] = "postgres"
    dsn: str = ""
    embedded: str = ""
    db_schema: str = "public"

    def _settings(self) -> dict[str, str]:
        return {"dsn": self.dsn, "embedded": self.embedded, "schema": self.db_schema}


class S3SiloResource(SiloResource):
    """Parquet objects in an S3 bucket; `path` stands a local folder in for the bucket (local deployment)."""

    kind: ClassVar[str] = "s3"
    bucket: str = ""
    prefix: str = ""
    endpoint_url: str = ""
    aws_region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key: str = ""
    path: str = ""

    def _settings(self) -> dict[str, str]:
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "endpoint_url": self.endpoint_url,
            "region": self.aws_region,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "path": self.path,
        }


class ParquetSiloResource(SiloResource):
    """A Parquet lake in a folder on the silo's premises."""

    kind: ClassVar[str] = "parquet"
    path: str

    def _settings(self) -> dict[str, str]:
        return {"path": self.path}
