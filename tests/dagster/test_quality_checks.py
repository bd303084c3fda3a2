"""Data-quality checks in Dagster: each suite is an asset check on its source asset, run by the
silo's agent in place; a failing blocking check stops what is downstream in the same run."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from assets.quality_checks import BLOCKING_TABLES, CHECK_NAME, quality_checks
from assets.sources import source_assets
from fedlake.quality import load_suites
from fedlake.silos import open_silo
from fedlake.synth.seed import seed_demo_bank
from platform_defs.definitions import build_definitions
from tests.conftest import REPO

NEGATIVE_AMOUNTS = 5
TRANSACTIONS = dg.AssetKey(["sg_lake", "transactions"])
AML_CASES = dg.AssetKey(["sg_lake", "aml_cases"])
CUSTOMERS = dg.AssetKey(["sg_lake", "customers"])


@dg.asset(key=["governed", "sg_spending_probe"], deps=[TRANSACTIONS], group_name="governed")
def downstream_of_transactions() -> dg.MaterializeResult:
    """Stands in for the join layer: it must not run on transactions that failed their suite."""
    return dg.MaterializeResult(metadata={"ran": True})


@dg.asset(key=["governed", "sg_cases_probe"], deps=[AML_CASES], group_name="governed")
def downstream_of_aml_cases() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"ran": True})


@dg.asset(key=["governed", "sg_customers_probe"], deps=[CUSTOMERS], group_name="governed")
def downstream_of_customers() -> dg.MaterializeResult:
    """Downstream of another blocking suite's table: a failure on transactions is none of its business."""
    return dg.MaterializeResult(metadata={"ran": True})


def quality_definitions(home, catalog, silos_yaml=REPO / "silos.yaml"):
    """The deployment's own resources: their in-process agents serve `validate` as wired (resources/silos.py)."""
    defs = build_definitions(silos_yaml, "local", home)
    suites = load_suites(silos_yaml, catalog)
    resources = dict(defs.resources)
    gate = dg.define_asset_job(
        "quality_gate",
        selection=dg.AssetSelection.assets(
            TRANSACTIONS, AML_CASES, CUSTOMERS, downstream_of_transactions, downstream_of_aml_cases, downstream_of_customers
        ),
    )
    return dg.Definitions(
        assets=[*source_assets(catalog), downstream_of_transactions, downstream_of_aml_cases, downstream_of_customers],
        asset_checks=quality_checks(catalog, suites, BLOCKING_TABLES),
        jobs=[gate],
        resources=resources,
    )


def run_gate(home, catalog, silos_yaml=REPO / "silos.yaml"):
    defs = quality_definitions(home, catalog, silos_yaml)
    result = defs.resolve_job_def("quality_gate").execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    checks = {
        (e.event_specific_data.asset_key, e.event_specific_data.check_name): e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    materialized = {e.event_specific_data.materialization.asset_key for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"}
    return result, checks, materialized


@pytest.fixture
def small_bank(catalog, tmp_path):
    seed_demo_bank(catalog, "local", tmp_path, 0.01, 3)
    return tmp_path


def test_every_suite_is_a_check_on_its_source_asset(catalog):
    suites = load_suites(REPO / "silos.yaml", catalog)
    checks = quality_checks(catalog, suites, BLOCKING_TABLES)
    assert all(len(list(c.check_specs)) == 1 for c in checks), "one step per suite: a failure blocks only its table"
    specs = {spec.key: spec for c in checks for spec in c.check_specs}
    assert len(specs) == sum(len(s.tables) for s in catalog.silos.values()) == 13
    for silo, spec in catalog.silos.items():
        for table in spec.tables:
            check = specs[dg.AssetCheckKey(dg.AssetKey([silo, table]), CHECK_NAME)]
            assert check.blocking == (table in BLOCKING_TABLES)
            assert check.metadata["suite_file"].endswith(f"expectations/{table}.json")


def test_clean_data_passes_and_downstream_runs(small_bank, catalog):
    result, checks, materialized = run_gate(small_bank, catalog)
    assert result.success
    assert checks[(TRANSACTIONS, CHECK_NAME)].passed and checks[(AML_CASES, CHECK_NAME)].passed
    assert {downstream_of_transactions.key, downstream_of_aml_cases.key} <= materialized


def test_negative_amounts_fail_the_check_in_place_and_block_downstream(small_bank, catalog):
    with open_silo(catalog.silo("sg_lake"), "local", small_bank) as lake:
        rows = lake.execute("SELECT * FROM transactions").read_all()
        index = rows.schema.get_field_index("amount")
        amount = rows.column(index).combine_chunks()
        first = pc.less(pa.array(range(rows.num_rows)), NEGATIVE_AMOUNTS)
        rows = rows.set_column(index, "amount", pc.if_else(first, pc.negate(amount), amount))
        lake.load("transactions", rows.schema, rows.to_batches())

    result, checks, materialized = run_gate(small_bank, catalog)
    failed = checks[(TRANSACTIONS, CHECK_NAME)]
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
    assert failed.metadata["failed_expectations"].value == ["expect_column_values_to_be_between(amount)"]
    assert failed.metadata["failed"].value == 1
    assert "SQL on DuckDB" in failed.metadata["engine"].value, "the lake's suite ran as SQL in its own DuckDB"
    results = {e["label"]: e for e in failed.metadata["expectations"].value}
    amount_result = results["expect_column_values_to_be_between(amount)"]
    assert amount_result["success"] is False and amount_result["unexpected_count"] == NEGATIVE_AMOUNTS
    assert "unexpected_values" not in amount_result and "aggregate" in amount_result["values_withheld"]
    assert results["expect_column_values_to_be_in_set(direction)"]["success"] is True
    assert "expect_column_values_to_be_between(amount): 5 unexpected" in failed.description
    assert "| expect_column_values_to_be_between(amount) | NO | 5 |" in failed.metadata["results"].value

    assert not result.success, "a failed blocking check fails the run"
    assert downstream_of_transactions.key not in materialized, "the blocking check kept bad data from downstream"
    assert checks[(AML_CASES, CHECK_NAME)].passed
    assert downstream_of_aml_cases.key in materialized, "a passing, non-blocking suite gates nothing"
    assert checks[(CUSTOMERS, CHECK_NAME)].passed
    assert downstream_of_customers.key in materialized, "each suite blocks only its own table's downstream"


def test_two_expectations_with_one_label_say_which_failed(small_bank, catalog, tmp_path):
    """Two range checks on amount (same type, same column): the failed one is named by its place."""
    deployment = tmp_path / "deployment"
    (deployment / "expectations" / "sg_lake").mkdir(parents=True)
    for name in ("silos.yaml", "policies.yaml"):
        shutil.copy(REPO / name, deployment / name)
    suite = json.loads((REPO / "expectations" / "transactions.json").read_text())
    suite["expectations"] = [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "amount", "min_value": 0}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "amount", "max_value": 1}},
    ]
    (deployment / "expectations" / "sg_lake" / "transactions.json").write_text(json.dumps(suite))
    _, checks, _ = run_gate(small_bank, catalog, deployment / "silos.yaml")
    failed = checks[(TRANSACTIONS, CHECK_NAME)]
    assert failed.metadata["failed_expectations"].value == ["expect_column_values_to_be_between(amount) [expectations[1]]"]
    assert "expect_column_values_to_be_between(amount) [expectations[1]]: " in failed.description
    assert "[expectations[0]]" not in failed.description


def test_suites_load_in_a_process_without_a_main_file():
    """Dagster's step processes (like `python -c`) have a __main__ without spec or file; where pyspark is
    installed, GE's import of Spark Connect used to end such a process silently (sys.exit(0))."""
    import subprocess
    import sys

    code = "from fedlake.quality import load_suites; print(len(load_suites(%r)), 'suites loaded')" % str(REPO / "silos.yaml")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "13 suites loaded" in done.stdout, done.stdout + done.stderr
