"""The compliance-gated join layer: built through the planner in the governed zone, exactly right,
pseudonymized where the policy says, and refused with the planner's explanation when the policy
forbids what it needs. Run on both deployments."""

from __future__ import annotations

import re


import dagster as dg
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from fedlake.audit import open_ledger
from fedlake.policy.transforms import derive_key, pseudonym, pseudonym_key
from fedlake.silos import open_governed_zone
from platform_defs.definitions import EVERYTHING_JOB, build_definitions
from tests.conftest import PSEUDONYM_KEY, REPO, materialize_groups


@pytest.fixture(scope="module", params=["local", "prod"])
def materialized(request):
    deployment = request.getfixturevalue(f"{request.param}_deployment")
    defs = build_definitions(REPO / "silos.yaml", deployment.name, deployment.home)
    result = materialize_groups(defs, {"governed"})
    assert result.success
    return deployment, result


def governed_table(deployment, table):
    with open_governed_zone(deployment.catalog, deployment.name, deployment.home) as zone:
        return zone.execute(f"SELECT * FROM {table}").read_all()


def metadata(result, node):
    [m] = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in m.metadata.items()}


def test_credit_features_reproduce_the_planted_features_from_compliant_parts(materialized):
    deployment, result = materialized
    features = governed_table(deployment, "customer_credit_features")
    truth = pq.read_table(deployment.home / "truth" / "loan_truth.parquet")
    assert features.num_rows == deployment.report.rows["eu_core"]["loans"] == truth.num_rows
    assert "national_id" not in features.column_names and "customer_id" not in features.column_names
    by_loan = {row["loan_id"]: row for row in features.to_pylist()}
    for expected in truth.to_pylist():
        got = by_loan[expected["loan_id"]]
        for name in ("dti", "spending_volatility", "gambling_share", "cash_advance_share", "cross_border_share"):
            assert got[name] == pytest.approx(expected[name], abs=1e-9), name
    # what the loans' own silo sees of a borrower who also banks abroad is only part of the picture
    abroad = pc.less(features.column("home_transactions"), features.column("transactions"))
    assert 0 < pc.sum(abroad).as_py() < features.num_rows


def test_credit_features_metadata_shows_what_crossed_and_how(materialized):
    deployment, result = materialized
    meta = metadata(result, "governed__customer_credit_features")
    assert meta["location"] == "governed.customer_credit_features" and meta["purpose"] == "credit_scoring"
    # one numeric entry per silo, which the UI plots across materializations; no duplicate JSON of the same
    crossing = {key.removeprefix("bytes_out/"): value for key, value in meta.items() if key.startswith("bytes_out/")}
    assert set(crossing) == {"eu_core", "us_lake", "sg_lake"} and all(isinstance(v, int) and v > 0 for v in crossing.values())
    assert not any(isinstance(v, dict) and set(v) == set(crossing) for v in meta.values())
    plan = meta["plan"]
    for silo in ("eu_core", "us_lake", "sg_lake"):
        assert f"at silo {silo}" in plan
    assert plan.count("pushed whole") >= 3 and "GROUP BY" in plan and "actual" in plan
    assert "national_id: PSEUDONYMIZE" in plan
    # the plan names the deployment's files relative to it, and carries no planner filler
    assert str(REPO) not in plan and str(deployment.home) not in plan and "TRUE AND" not in plan
    summary = {(r.data["silo"], r.data["action"]): r.data for r in meta["policy_summary"].records}
    assert "customers.national_id" in summary[("eu_core", "pseudonymize")]["which"]
    assert {silo for silo, _ in summary} == {"eu_core", "us_lake", "sg_lake"}
    assert all("/" not in r["rules"] for r in summary.values())
    assert meta["residual_site"] == "silo eu_core"
    # the residual runs in eu_core's agent, next to the loans: their rows never cross, only the result
    assert "residual at silo eu_core" in plan and "stays in silo eu_core, where the residual runs" in plan
    assert "placement, estimated bytes crossing per site" in plan and "silo eu_core" in plan
    # from there the borrowers' pseudonyms go to the other silos' person fragments (agent to agent, over
    # Flight in prod) as a key set
    assert plan.count("semi-join (") == 2 and "keys in" in plan
    ledger = open_ledger(deployment.env.get("FEDLAKE_LEDGER") or str(deployment.home / "governed" / "audit.duckdb"))
    entries = {e["seq"]: e for e in ledger.entries()}
    recorded = [entries[int(seq)] for seq in re.findall(r"\*\*#(\d+)\*\*", meta["audit_entries"])]
    assert recorded and {e["purpose"] for e in recorded} == {"credit_scoring"}
    assert {e["silo"] for e in recorded} == {"eu_core", "us_lake", "sg_lake"}
    assert sum(e["bytes"] for e in recorded) == pytest.approx(sum(crossing.values()), rel=0.05)
    assert "credit_scoring" in meta["audit_entries"] and "\n- **#" in meta["audit_entries"]


def test_the_governed_zone_is_checked_reconciled_contracted_and_free_of_pii(materialized):
    deployment, result = materialized
    checks = {
        (e.event_specific_data.asset_key.path[-1], e.event_specific_data.check_name): e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    loans = deployment.report.rows["eu_core"]["loans"]
    reconciled = checks[("customer_credit_features", "row_count_reconciles_with_sources")]
    assert reconciled.passed and reconciled.metadata["derived"].value == reconciled.metadata["source_rows"].value == loans
    transactions = sum(rows["transactions"] for rows in deployment.report.rows.values())
    assert checks[("aml_account_signals", "row_count_reconciles_with_sources")].metadata["derived"].value == transactions
    for table in ("customer_credit_features", "aml_account_signals"):
        assert checks[(table, "no_undeclared_pii")].passed and checks[(table, "schema_contract")].passed
        assert checks[(table, "no_undeclared_pii")].metadata["scanned_columns"].value


def test_aml_signals_link_accounts_across_regions_on_pseudonyms(materialized):
    deployment, result = materialized
    signals = governed_table(deployment, "aml_account_signals")
    master = PSEUDONYM_KEY.encode() if deployment.name == "prod" else pseudonym_key(deployment.home)
    key = derive_key(master, "aml", "account")  # accounts are pseudonymized in the account domain for AML
    members = pq.read_table(deployment.home / "truth" / "aml_pattern_accounts.parquet")
    patterns = pq.read_table(deployment.home / "truth" / "aml_patterns.parquet")
    cycles = {p["pattern_id"] for p in patterns.to_pylist() if p["kind"] == "cross_border_cycle"}
    cycle_accounts = {m["account_id"] for m in members.to_pylist() if m["pattern_id"] in cycles}
    token = {a: pseudonym(a, key) for a in cycle_accounts}
    rows = {r["account_id"]: r for r in signals.to_pylist()}
    assert not set(rows) & cycle_accounts, "raw account ids never reach the governed zone"
    linked = [rows[t]["linked_regions_abroad"] for t in token.values() if t in rows]
    assert linked and all(n >= 1 for n in linked), "every account of a cross-border cycle is linked abroad"
    meta = metadata(result, "governed__aml_account_signals")
    assert meta["purpose"] == "aml"
    # a silo's links to other accounts are reduced by the bank's own account keys where the key set
    # costs less than what it saves (8 bytes a key); EXPLAIN says which, and why not elsewhere
    assert "rows whose counterparty_account may be among the keys of __f0.account_id, __f1.account_id" in meta["plan"]


def test_an_asset_the_policy_forbids_fails_with_the_planners_explanation(local_deployment, tmp_path):
    policy = yaml.safe_load((REPO / "policies.yaml").read_text())
    policy["classifications"]["pii.direct"] = [{"action": "deny"}]
    strict = tmp_path / "policies.yaml"
    strict.write_text(yaml.safe_dump(policy))
    defs = build_definitions(REPO / "silos.yaml", "local", local_deployment.home, policy_path=strict)
    job = defs.resolve_job_def(EVERYTHING_JOB)
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        asset_selection=[dg.AssetKey(["governed", "customer_credit_features"])],
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.cause.message if failure.step_failure_data.error.cause else failure.step_failure_data.error.message
    assert "no compliant plan for governed.customer_credit_features" in message
    assert "DENIED: " in message and "column national_id of" in message and "classifications.pii.direct[0]" in message
