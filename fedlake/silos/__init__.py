"""One connector per silo kind, opened from the catalog's connection settings for a deployment."""

from __future__ import annotations

import os
from pathlib import Path

from fedlake.catalog import Catalog, EnvRef, LakeSpec, SiloSpec
from fedlake.errors import ConfigError, SiloError
from fedlake.silos.base import Connector, EgressCounter, MaterializedTable, TableStatistics, TableStats
from fedlake.silos.parquet import ParquetConnector
from fedlake.silos.s3 import S3Connector

_POSTGRES = ("MADE_SCHEMA", "PostgresConnector", "embedded_dsn", "embedded_roles", "ensure_roles")


def __getattr__(name: str):
    """The PostgreSQL connector is imported when first asked for (psycopg costs a cold CLI ~0.1 s)."""
    if name in _POSTGRES:
        from fedlake.silos import postgres

        return getattr(postgres, name)
    raise AttributeError(f"module 'fedlake.silos' has no attribute '{name}'")

__all__ = [
    "Connector",
    "EgressCounter",
    "MaterializedTable",
    "TableStatistics",
    "TableStats",
    "ParquetConnector",
    "PostgresConnector",
    "ensure_roles",
    "S3Connector",
    "open_governed_zone",
    "governed_connector",
    "open_silo",
    "connector_for",
    "data_dir",
]


def data_dir() -> Path:
    """The folder holding everything the local deployment keeps: FEDLAKE_HOME, else ./data."""
    return Path(os.environ.get("FEDLAKE_HOME", "data")).expanduser().resolve()


# Settings a process may lack: the agent reads and materializes without the data owner's credentials.
OPTIONAL_ENV_SETTINGS = {"owner_dsn"}


def resolve_settings(spec: SiloSpec, deployment: str) -> dict[str, str]:
    """Connection settings with every {env: NAME} read now, for this call only."""
    settings = spec.connection(deployment)
    where = f"{spec.source_file} (silos.{spec.name}.connection.{deployment})"
    return {
        k: v.resolve(where) if isinstance(v, EnvRef) else v
        for k, v in settings.items()
        if not (k in OPTIONAL_ENV_SETTINGS and isinstance(v, EnvRef) and v.name not in os.environ)
    }


def connector_for(kind: str, name: str, region: str, settings: dict[str, str], home: Path, lake: LakeSpec | None = None) -> Connector:
    """Build the connector of one kind from plain settings; relative paths live under `home`. A lake
    silo's `lake` settings say which source tables are plain Parquet and how long versions last."""
    lake = lake or LakeSpec()

    def under_home(path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else home / p

    if kind in ("s3", "parquet") and settings.get("engine") == "spark":
        from fedlake.silos.spark import spark_lake

        return spark_lake(name, settings, lambda lake_settings: connector_for(kind, name, region, lake_settings, home, lake))
    if kind == "postgres":
        from fedlake.silos.postgres import MADE_SCHEMA, PostgresConnector, embedded_dsn, embedded_roles

        schema = settings.get("schema") or "public"
        writer_schema = settings.get("writer_schema") or MADE_SCHEMA
        if settings.get("dsn"):
            dsn, writer_dsn, owner_dsn = settings["dsn"], settings.get("writer_dsn") or None, settings.get("owner_dsn") or None
        elif settings.get("embedded"):
            # the local server is the silo's alone: its superuser is the owner, the agent gets the roles
            try:
                owner_dsn = embedded_dsn(under_home(settings["embedded"]))
                dsn, writer_dsn = embedded_roles(owner_dsn, schema, writer_schema)
            except SiloError as exc:
                raise SiloError(f"silo {name}: {exc}") from exc
        else:
            raise ConfigError("silos.yaml", f"silos.{name}.connection", "a postgres silo needs dsn or embedded")
        return PostgresConnector(
            name,
            region,
            dsn,
            schema=schema,
            engine=settings.get("engine") or "duckdb",
            writer_dsn=writer_dsn,
            owner_dsn=owner_dsn,
            writer_schema=writer_schema if writer_dsn else None,
        )
    if kind == "s3" and settings.get("bucket"):
        return S3Connector(
            name,
            region,
            bucket=settings["bucket"],
            prefix=settings.get("prefix", ""),
            endpoint_url=settings.get("endpoint_url", ""),
            aws_region=settings.get("region") or "us-east-1",
            access_key_id=settings.get("access_key_id", ""),
            secret_access_key=settings.get("secret_access_key", ""),
            formats=lake.formats,
            retention_hours=lake.retention_hours,
        )
    if kind in ("s3", "parquet") and settings.get("path"):
        # An s3 silo with a path is the local deployment's stand-in: the same lake on local disk.
        return ParquetConnector(name, region, under_home(settings["path"]), lake.formats, lake.retention_hours)
    raise ConfigError("silos.yaml", f"silos.{name}.connection", f"incomplete settings for kind {kind}: {sorted(settings)}")


def open_governed_zone(catalog: Catalog, deployment: str, home: Path | None = None) -> Connector:
    """The governed zone, where compliant joined data lives: a Parquet lake or a PostgreSQL schema."""
    if deployment not in catalog.governed_connections:
        raise ConfigError(catalog.path, "governed_zone.connection", f"no connection for deployment '{deployment}'")
    where = f"{catalog.path} (governed_zone.connection.{deployment})"
    settings = {k: v.resolve(where) if isinstance(v, EnvRef) else v for k, v in catalog.governed_connections[deployment].items()}
    return governed_connector(settings, catalog.governed_region, home or data_dir())


def governed_connector(settings: dict[str, str], region: str, home: Path) -> Connector:
    kind = "postgres" if settings.get("dsn") else "parquet"
    connector = connector_for(kind, "governed", region, settings, home)
    if kind == "postgres":
        connector.ensure_schema()
    return connector


def open_silo(spec: SiloSpec, deployment: str, home: Path | None = None) -> Connector:
    return connector_for(spec.kind, spec.name, spec.region, resolve_settings(spec, deployment), home or data_dir(), spec.lake)
