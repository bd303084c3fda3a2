"""Assembles fedlake's Dagster Definitions for the chosen deployment."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from assets.audit import audit_ledger_asset, hash_chain_intact
from assets.dbt_marts import DBT_RESOURCE_KEY, dbt_marts_assets, dbt_marts_resource
from assets.governed import governed_assets
from assets.in_silo import in_silo_assets
from assets.models import model_assets, model_checks
from assets.pii_checks import pii_checks
from assets.quality_checks import quality_checks
from assets.sources import source_assets
from fedlake.catalog import default_catalog_path, load_catalog
from fedlake.policy.model import POLICIES_ENV, load_policy
from fedlake.quality import load_suites
from fedlake.silos import data_dir
from platform_defs.deployments import (
    current_deployment,
    governed_zone_resource,
    ledger_resource,
    model_registry_resource,
    silo_resources,
)
from resources.federated_io_manager import federated_io_manager
from sensors.new_data import new_data_sensors
from sensors.retraining import drift_sensor, nightly_retraining, retraining_job
from sensors.run_failures import run_failure_alerts

EVERYTHING_JOB = "materialize_everything"


def build_definitions(
    catalog_path: str | Path | None = None,
    deployment: str | None = None,
    home: str | Path | None = None,
    policy_path: str | Path | None = None,
) -> dg.Definitions:
    catalog_path = Path(catalog_path or default_catalog_path())
    catalog = load_catalog(catalog_path)
    policy = load_policy(policy_path or os.environ.get(POLICIES_ENV) or catalog_path.with_name("policies.yaml"), catalog)
    deployment = deployment or current_deployment()
    home = Path(home) if home else data_dir()
    resources: dict[str, object] = dict(silo_resources(catalog, policy, deployment, home))
    resources["federated_io_manager"] = federated_io_manager(catalog)
    resources["ledger"] = ledger_resource(deployment, home)
    resources["governed_zone"] = governed_zone_resource(catalog, deployment, home)
    resources[DBT_RESOURCE_KEY] = dbt_marts_resource(catalog, deployment, home)
    resources["model_registry"] = model_registry_resource(home)
    sources = [*source_assets(catalog), audit_ledger_asset()]
    everything = dg.define_asset_job(
        EVERYTHING_JOB,
        selection=dg.AssetSelection.all() | dg.AssetSelection.assets(*(key for s in sources for key in s.keys)),
        description="Observe every silo table and materialize every asset, where each belongs.",
    )
    retrain = retraining_job()
    return dg.Definitions(
        assets=[*sources, *in_silo_assets(catalog), *governed_assets(catalog), dbt_marts_assets(), *model_assets(catalog)],
        asset_checks=[
            *pii_checks(catalog),
            *quality_checks(catalog, load_suites(catalog_path, catalog)),
            hash_chain_intact,
            *model_checks(),
        ],
        jobs=[everything, retrain],
        schedules=[nightly_retraining(retrain)],
        sensors=[*new_data_sensors(catalog), run_failure_alerts(home), drift_sensor(retrain)],
        resources=resources,
    )
