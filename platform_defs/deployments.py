"""The one place that decides the deployment and the resources that go with it."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from assets.dbt_marts import dbt_executable, dbt_project
from fedlake.agent import AGENT_CA_ENV
from fedlake.catalog import Catalog, EnvRef
from fedlake.errors import ConfigError
from fedlake.policy.model import Policy
from resources.dbt_marts import FedlakeDbtResource
from resources.governed_zone import GovernedZoneResource
from resources.ledger import LedgerResource
from resources.model_registry import ModelRegistryResource
from resources.silos import COORDINATOR, ParquetSiloResource, PostgresSiloResource, S3SiloResource, SiloResource

DEPLOYMENT_ENV = "FEDLAKE_DEPLOYMENT"
LEDGER_ENV = "FEDLAKE_LEDGER"

SILO_RESOURCE_BY_KIND: dict[str, type[SiloResource]] = {
    "postgres": PostgresSiloResource,
    "s3": S3SiloResource,
    "parquet": ParquetSiloResource,
}

# silos.yaml setting names that differ from the resource field names
_FIELD_BY_SETTING = {"schema": "db_schema", "region": "aws_region"}


def current_deployment() -> str:
    deployment = os.environ.get(DEPLOYMENT_ENV, "local")
    if deployment not in ("local", "prod"):
        raise ValueError(f"{DEPLOYMENT_ENV}={deployment!r}: expected 'local' or 'prod'")
    return deployment


def _value(value: str | EnvRef) -> str | dg.EnvVar:
    return dg.EnvVar(value.name) if isinstance(value, EnvRef) else value


def silo_resources(catalog: Catalog, policy: Policy, deployment: str, home: Path) -> dict[str, SiloResource]:
    """A resource per silo. Where the deployment names an agent for the silo, Dagster only gets the
    agent's address and its own token (secrets as dg.EnvVar); the silo's credentials stay with the
    agent. Otherwise the resource carries the connection settings of an in-process agent."""
    resources = {}
    for name, spec in catalog.silos.items():
        common = {
            "ledger": local_ledger_path(home),
            "silo": name,
            "region": spec.region,
            "home": str(home),
            "catalog_path": str(Path(catalog.path).resolve()),
            "policy_path": str(Path(policy.path).resolve()),
        }
        agent = spec.agents.get(deployment)
        if agent:
            fields = {
                "agent_location": _value(agent["location"]),
                "agent_token": dg.EnvVar(policy.clients[COORDINATOR].token_env),
                "agent_ca_cert": dg.EnvVar(AGENT_CA_ENV),
            }
        else:
            fields = {
                _FIELD_BY_SETTING.get(setting, setting): _value(value)
                for setting, value in spec.connection(deployment).items()
            }
        resources[name] = SILO_RESOURCE_BY_KIND[spec.kind](**common, **fields)
    return resources


def governed_zone_resource(catalog: Catalog, deployment: str, home: Path) -> GovernedZoneResource:
    settings = {
        _FIELD_BY_SETTING.get(setting, setting): _value(value)
        for setting, value in catalog.governed_connections.get(deployment, {}).items()
    }
    return GovernedZoneResource(region=catalog.governed_region, home=str(home), **settings)


def local_ledger_path(home: Path) -> str:
    """The governed zone's ledger in the local deployment, shared by its in-process agents."""
    return str(home / "governed" / "audit.duckdb")


def ledger_resource(deployment: str, home: Path) -> LedgerResource:
    if deployment == "prod":
        return LedgerResource(location=dg.EnvVar(LEDGER_ENV))
    return LedgerResource(location=local_ledger_path(home))


def model_registry_resource(home: Path) -> ModelRegistryResource:
    """Model versions live beside the governed zone; the demo bank's truth (if seeded) scores the oracle."""
    return ModelRegistryResource(root=str(home / "governed" / "models"), truth_dir=str(home / "truth"))


def dbt_marts_resource(catalog: Catalog, deployment: str, home: Path) -> FedlakeDbtResource:
    """dbt on the governed zone of this deployment: dbt-duckdb on the Parquet/Delta lake (`path`,
    target `local`), or dbt-postgres in the governed PostgreSQL database (`dsn`, target `prod`),
    whose DSN dbt gets from the environment variable named in silos.yaml when it runs."""
    home = Path(home).expanduser().resolve()
    settings = catalog.governed_connections.get(deployment)
    if not settings:
        raise ConfigError(catalog.path, "governed_zone.connection", f"no connection for deployment '{deployment}'")
    common = {
        "project_dir": dbt_project,
        "dbt_executable": dbt_executable(),
        "fedlake_home": str(home),
        "config_source": str(catalog.path),
    }
    if "dsn" in settings:
        dsn = settings["dsn"]
        if not isinstance(dsn, EnvRef):
            raise ConfigError(
                catalog.path,
                f"governed_zone.connection.{deployment}.dsn",
                "a DSN holds a password: write it as {env: NAME} and set NAME where Dagster runs",
            )
        schema = str(settings.get("schema") or "public")
        return FedlakeDbtResource(
            **common,
            target="prod",
            governed_dsn_env=dsn.name,
            governed_schema=schema,
            config_key=f"governed_zone.connection.{deployment}.dsn",
        )
    if "path" in settings:
        zone = Path(str(settings["path"])).expanduser()
        return FedlakeDbtResource(**common, target="local", governed_zone=str(zone if zone.is_absolute() else home / zone))
    raise ConfigError(catalog.path, f"governed_zone.connection.{deployment}", f"expected path or dsn, got {sorted(settings)}")
