"""Dagster as its users expect it: owners, region tags and kinds true per deployment, freshness on
the join layer and the models, a check on every asset, automation that does not retrain every model
on one silo's new rows, and a day of the daily in-silo assets materialized and reconciled."""

from __future__ import annotations

import dagster as dg
import pytest

from platform_defs.definitions import build_definitions
from platform_defs.jobs import DAILY_JOB, EVERYTHING_JOB
from tests.conftest import REPO

MODELS = {dg.AssetKey(["models", "credit_scoring_model"]), dg.AssetKey(["models", "aml_model"])}


@pytest.fixture(scope="module")
def definitions(tmp_path_factory):
    home = tmp_path_factory.mktemp("conventions")
    return {name: build_definitions(REPO / "silos.yaml", name, home) for name in ("local", "prod")}


def specs(defs: dg.Definitions) -> dict[dg.AssetKey, dg.AssetSpec]:
    return {spec.key: spec for spec in defs.resolve_all_asset_specs()}


def test_every_asset_has_owners_and_where_it_lives(definitions, catalog):
    for spec in specs(definitions["local"]).values():
        assert spec.owners, f"{spec.key.to_user_string()} has no owner"
        home = spec.key.path[0]
        expected = catalog.silo(home).region if home in catalog.silos else catalog.governed_region
        assert spec.tags.get("region") == expected, spec.key.to_user_string()
        if home in catalog.silos:
            assert catalog.silo(home).kind in spec.kinds and spec.owners == [f"team:{home.replace('_', '-')}"]


def test_source_columns_are_typed_by_observation_not_by_declaration(definitions):
    transactions = specs(definitions["local"])[dg.AssetKey(["sg_lake", "transactions"])]
    assert "dagster/column_schema" not in transactions.metadata
    assert "| memo | free_text |" in transactions.metadata["classifications"].value


def test_kinds_follow_the_deployment(definitions):
    features = dg.AssetKey(["governed", "customer_credit_features"])
    ledger = dg.AssetKey(["governed", "audit_ledger"])
    local, prod = specs(definitions["local"]), specs(definitions["prod"])
    assert "duckdb" in local[features].kinds and "postgres" not in local[features].kinds
    assert "postgres" in prod[features].kinds and "duckdb" not in prod[features].kinds
    assert prod[ledger].kinds == {"postgres"} and local[ledger].kinds == {"duckdb"}
    assert prod[dg.AssetKey(["sg_lake", "monthly_spending"])].kinds == {"sql", "parquet"}
    # dbt builds the marts in the governed zone's engine: dbt-postgres in prod, dbt-duckdb locally
    for mart in (key for key, spec in prod.items() if spec.group_name == "marts"):
        assert prod[mart].kinds == {"dbt", "postgres"} and local[mart].kinds == {"dbt", "duckdb"}, mart


def test_freshness_on_the_join_layer_and_the_models_and_a_check_on_every_asset(definitions):
    defs = definitions["local"]
    everything = specs(defs)
    fresh = {key for key, spec in everything.items() if spec.freshness_policy is not None}
    models = {key for key in everything if key.path[0] == "models"}
    assert MODELS <= models and fresh == models | {dg.AssetKey(["governed", "customer_credit_features"]), dg.AssetKey(["governed", "aml_account_signals"])}
    checked = {key.asset_key for key in defs.resolve_asset_graph().asset_check_keys}
    assert set(everything) - checked == set(), "every asset has at least one check"
    names = {(key.asset_key.to_user_string(), key.name) for key in defs.resolve_asset_graph().asset_check_keys}
    for governed in ("governed/customer_credit_features", "governed/aml_account_signals"):
        for check in ("row_count_reconciles_with_sources", "no_undeclared_pii", "schema_contract"):
            assert (governed, check) in names


def test_new_rows_in_a_silo_rebuild_the_join_layer_but_retrain_no_model(definitions):
    defs = definitions["local"]
    graph = defs.resolve_asset_graph()
    refresh = defs.resolve_job_def("sg_lake_refresh").asset_layer.selected_asset_keys
    assert dg.AssetKey(["governed", "aml_account_signals"]) in refresh and not refresh & MODELS
    assert not defs.resolve_job_def(EVERYTHING_JOB).partitions_def and graph.get(dg.AssetKey(["sg_lake", "daily_transactions"])).partitions_def
    assert defs.resolve_sensor_def("credit_scoring_model_drift").default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_schedule_def("nightly_retraining").default_status == dg.DefaultScheduleStatus.RUNNING


def test_a_day_of_transactions_is_materialized_in_each_silo_and_reconciled(local_deployment):
    defs = build_definitions(REPO / "silos.yaml", "local", local_deployment.home)
    result = defs.resolve_job_def(DAILY_JOB).execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), partition_key="2025-03-03"
    )
    assert result.success
    made = {m.asset_key.path[0]: m for m in result.asset_materializations_for_node("sg_lake__daily_transactions")}
    assert made["sg_lake"].partition == "2025-03-03"
    assert made["sg_lake"].metadata["location"].value == "sg_lake.daily_transactions__20250303"
    assert made["sg_lake"].metadata["bytes_moved_out"].value == 0
    checks = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert {c.asset_key.path[0] for c in checks} == set(local_deployment.catalog.silos)
    assert all(c.passed and c.metadata["source_rows"].value > 0 for c in checks), [c.description for c in checks]
