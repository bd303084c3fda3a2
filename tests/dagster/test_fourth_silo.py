"""A fourth silo, in a region the demo generator knows nothing of, declared in silos.yaml alone:
seeded, observed, joined by the governed layer, trained on by the AML model, and checked."""

from __future__ import annotations

import dagster as dg

from fedlake.audit import open_ledger
from fedlake.silos import open_governed_zone
from platform_defs.definitions import EVERYTHING_JOB, build_definitions

UK_TABLES = [dg.AssetKey(["uk_lake", t]) for t in ("customers", "accounts", "transactions", "aml_cases")]
CREDIT_FEATURES = dg.AssetKey(["governed", "customer_credit_features"])
AML_SIGNALS = dg.AssetKey(["governed", "aml_account_signals"])
AML = dg.AssetKey(["models", "aml_model"])


def test_a_fourth_silo_is_seeded_observed_joined_trained_on_and_checked(four_silo_deployment):
    deployment = four_silo_deployment
    assert deployment.report.rows["uk_lake"]["transactions"] > 0
    defs = build_definitions(deployment.catalog.path, "local", deployment.home)
    for key in (CREDIT_FEATURES, AML_SIGNALS):
        assert dg.AssetKey(["uk_lake", "transactions"]) in defs.resolve_assets_def(key).dependency_keys

    config = {"ops": {"models__aml_model": {"config": {"rounds": 1, "local_epochs": 1}}}}
    result = defs.resolve_job_def(EVERYTHING_JOB).execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), asset_selection=[*UK_TABLES, AML_SIGNALS, AML], run_config=config,
        raise_on_error=False,
    )
    # one round on a tiny bank need not beat the champion's floor: its promotion check may block
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert {AML_SIGNALS, AML} <= materialized, "the join layer is built and the AML model trained and registered"
    observed = {e.asset_key for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"}
    assert set(UK_TABLES) <= observed
    checks = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    on_uk = [c for c in checks if c.asset_key in UK_TABLES]
    assert {c.check_name for c in on_uk} >= {"no_undeclared_pii", "expectation_suite"} and all(c.passed for c in on_uk)
    assert "promote_if_better" in {c.check_name for c in checks if c.asset_key == AML}

    with open_governed_zone(deployment.catalog, "local", deployment.home) as zone:
        rows = zone.execute("SELECT region, count(*) AS accounts FROM aml_account_signals GROUP BY region").read_all()
    regions = {r["region"]: r["accounts"] for r in rows.to_pylist()}
    assert set(regions) == {"EU", "US", "SG", "UK"} and regions["UK"] > 0

    entries = open_ledger(str(deployment.home / "governed" / "audit.duckdb")).entries()
    trained = {e["silo"] for e in entries if e["operation"] == "train_round"}
    assert trained == set(deployment.catalog.silos), "the AML model trains in every silo, uk_lake included"
    queried = {e["silo"] for e in entries if e["operation"] == "query" and e["purpose"] == "aml"}
    assert queried == set(deployment.catalog.silos), "each silo's part of the join layer crossed through its own gate"
