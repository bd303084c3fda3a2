"""Dagster resources, one per silo kind. Each hands out the silo's agent: the one way into it.

Where the deployment names an agent location (prod), the resource is a Flight client of the agent
running next to the silo, with TLS and a bearer token. Otherwise (local) the resource starts the
same agent in-process from its own connection settings: same gate, same ledger, no network.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import dagster as dg
from pydantic import PrivateAttr

from fedlake.agent import AgentClient, FlightAgentClient, InProcessAgentClient, build_agent, client_token, ledger_for
from fedlake.audit import open_ledger
from fedlake.signing import signing_key
from fedlake.catalog import load_catalog
from fedlake.plugins import serving_plugins
from fedlake.policy.model import load_policy
from fedlake.silos import connector_for

COORDINATOR = "coordinator"


class SiloResource(dg.ConfigurableResource):
    """A silo as Dagster sees it: its name and region, and how to reach its agent."""

    silo: str
    region: str
    home: str  # the data folder: relative paths, local secrets and the local ledger live here
    catalog_path: str
    policy_path: str
    ledger: str = ""  # the governed zone's ledger for an in-process agent (DuckDB path or PostgreSQL DSN)
    agent_location: str = ""  # grpc+tls://host:port of the silo's agent; empty: run it in-process
    agent_token: str = ""
    agent_ca_cert: str = ""

    kind: ClassVar[str]
    _client: AgentClient | None = PrivateAttr(default=None)

    def _settings(self) -> dict[str, str]:
        raise NotImplementedError

    def agent(self) -> AgentClient:
        """This run's client of the silo's agent, opened on first use and closed after the run."""
        if self._client is None:
            self._client = self._remote() if self.agent_location else self._in_process()
        return self._client

    def _remote(self) -> AgentClient:
        return FlightAgentClient(self.silo, self.agent_location, self.agent_token, self.agent_ca_cert or None)

    def _in_process(self) -> AgentClient:
        home = Path(self.home)
        catalog = load_catalog(self.catalog_path)
        policy = load_policy(self.policy_path, catalog)
        agent = build_agent(
            catalog,
            policy,
            self.silo,
            "local",
            home,
            connector=connector_for(self.kind, self.silo, self.region, self._settings(), home, catalog.silo(self.silo).lake),
            # the in-process agent signs its own chain, as an agent process would
            ledger=open_ledger(self.ledger, signer=signing_key(home, self.silo)) if self.ledger else ledger_for(home, self.silo),
            plugins=serving_plugins(),
        )
        return InProcessAgentClient(agent, self.agent_token or client_token(policy, COORDINATOR, "local", home))

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class PostgresSiloResource(SiloResource):
    """A PostgreSQL silo: its reader, writer and owner DSNs, or an embedded server whose data folder
    is named (local) and whose roles are derived from it."""

    kind: ClassVar[str] = "postgres"
    dsn: str = ""
    writer_dsn: str = ""
    owner_dsn: str = ""
    embedded: str = ""
    db_schema: str = "public"
    writer_schema: str = ""
    engine: str = ""

    def _settings(self) -> dict[str, str]:
        return {
            "dsn": self.dsn,
            "writer_dsn": self.writer_dsn,
            "owner_dsn": self.owner_dsn,
            "embedded": self.embedded,
            "schema": self.db_schema,
            "writer_schema": self.writer_schema,
            "engine": self.engine,
        }


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
    engine: str = ""  # spark: the lake's fragments run on Spark (a local stand-in only)
    spark_master: str = ""

    def _settings(self) -> dict[str, str]:
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "endpoint_url": self.endpoint_url,
            "region": self.aws_region,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "path": self.path,
            "engine": self.engine,
            "spark_master": self.spark_master,
        }


class ParquetSiloResource(SiloResource):
    """A Parquet lake in a folder on the silo's premises."""

    kind: ClassVar[str] = "parquet"
    path: str = ""
    engine: str = ""  # spark: the lake's fragments run on Spark, on spark_master
    spark_master: str = ""

    def _settings(self) -> dict[str, str]:
        return {"path": self.path, "engine": self.engine, "spark_master": self.spark_master}
