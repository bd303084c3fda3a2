"""The one place that decides the deployment and the resources that go with it."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from fedlake.catalog import Catalog, EnvRef
from fedlake.policy.model import Policy
from resources.governed_zone import GovernedZoneResource
from resources.ledger import LedgerResource
from resources.model_registry import ModelRegistryResource
from resources.silos import COORDINATOR, ParquetSiloResource, PostgresSiloResource, S3SiloResource, SiloResource

DEPLOYMENT_ENV = "FEDLAKE_DEPLOYMENT"
AGENT_CA_ENV = "FEDLAKE_AGENT_CA"  # the CA certificate the coordinator trusts for agents' TLS
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
