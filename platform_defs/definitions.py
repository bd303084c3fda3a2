"""Assembles fedlake's Dagster Definitions for the chosen deployment."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from assets.audit import audit_ledger_asset
from assets.dbt_marts import DBT_RESOURCE_KEY, dbt_marts_assets
from assets.governed import governed_assets
from assets.in_silo import in_silo_assets, partitioned_in_silo_assets
from assets.models import model_assets
from assets.sources import source_assets
from fedlake.catalog import default_catalog_path, load_catalog
from fedlake.policy.model import POLICIES_ENV, load_policy
from fedlake.silos import data_dir
from platform_defs.checks import all_checks
from platform_defs.conventions import apply_conventions
from platform_defs.jobs import EVERYTHING_JOB, daily_job, daily_schedule, everything_job
from platform_defs.deployments import (
    current_deployment,
    dbt_marts_resource,
    governed_zone_resource,
    ledger_resource,
    model_registry_resource,
    silo_resources,
)
from resources.federated_io_manager import federated_io_manager
from sensors.new_data import new_data_sensors
from sensors.retraining import drift_sensor, nightly_retraining, retraining_job
from sensors.run_failures import run_failure_alerts

__all__ = ["EVERYTHING_JOB", "build_definitions"]


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
    in_silo, governed = in_silo_assets(catalog), governed_assets(catalog)
    partitioned = partitioned_in_silo_assets(catalog)
    retrain, daily = retraining_job(), daily_job(partitioned)
    return dg.Definitions(
        assets=apply_conventions(
            [*sources, *in_silo, *partitioned, *governed, dbt_marts_assets(), *model_assets(catalog)], catalog, deployment
        ),
        asset_checks=all_checks(catalog, catalog_path, in_silo, partitioned, governed),
        jobs=[everything_job(sources, partitioned), daily, retrain],
        schedules=[nightly_retraining(retrain), daily_schedule(daily)],
        sensors=[*new_data_sensors(catalog), run_failure_alerts(home), drift_sensor(retrain)],
        resources=resources,
    )
