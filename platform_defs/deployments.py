"""The one place that decides the deployment and the resources that go with it."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from fedlake.catalog import Catalog, EnvRef
from resources.silos import ParquetSiloResource, PostgresSiloResource, S3SiloResource, SiloResource

DEPLOYMENT_ENV = "FEDLAKE_DEPLOYMENT"

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


def silo_resources(catalog: Catalog, deployment: str, home: Path) -> dict[str, SiloResource]:
    """A resource per silo, configured from silos.yaml; {env: NAME} settings become dg.EnvVar."""
    resources = {}
    for name, spec in catalog.silos.items():
        fields = {
            _FIELD_BY_SETTING.get(setting, setting): dg.EnvVar(value.name) if isinstance(value, EnvRef) else value
            for setting, value in spec.connection(deployment).items()
        }
        resources[name] = SILO_RESOURCE_BY_KIND[spec.kind](silo=name, region=spec.region, home=str(home), **fields)
    return resources
