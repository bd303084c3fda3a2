"""The dbt marts on the governed zone, run by Dagster: they sit downstream of the governed assets,
their contents agree with the governed data and the rules they state, every dbt test reports as a
passing asset check, and only the governed zone's committed version is read. Run on both
deployments: local (dbt-duckdb on the governed Parquet lake) and prod (dbt-postgres in the
governed PostgreSQL database, the session's PostgreSQL server), where they must hold the same rows."""

from __future__ import annotations

import shutil
from collections import Counter
from decimal import Decimal

import dagster as dg
import duckdb
import psycopg
import pyarrow.parquet as pq
import pytest
import yaml
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from assets.dbt_marts import DBT_PROJECT_DIR, DBT_RESOURCE_KEY, MARTS_GROUP, dbt_marts_assets, prepare_dbt_manifest
from fedlake.errors import ConfigError
from fedlake.policy.transforms import derive_key, pseudonym, pseudonym_key
from fedlake.silos import open_governed_zone
from platform_defs.definitions import build_definitions
from platform_defs.deployments import dbt_marts_resource
from resources.dbt_marts import MARTS_DATABASE, PASSWORD_ENV, libpq_environment
from tests.conftest import PSEUDONYM_KEY, REPO, materialize_groups

MARTS = ("customer_risk_profile", "aml_account_alerts", "aml_alert_summary")
VARS = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())["vars"]


@pytest.fixture(scope="module")
def dbt_marts():
    """The install step's manifest, rebuilt here so the tests never run on a stale one."""
    prepare_dbt_manifest()
    return dbt_marts_assets()


def build_marts(deployment, dbt_marts) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [dbt_marts],
        resources={DBT_RESOURCE_KEY: dbt_marts_resource(deployment.catalog, deployment.name, deployment.home)},
        instance=dg.DagsterInstance.ephemeral(),
    )


def governed_then_marts(deployment, dbt_marts, monkeypatch_module):
    # dbt must follow the home Dagster was given, not whatever FEDLAKE_HOME says
    monkeypatch_module.setenv("FEDLAKE_HOME", str(deployment.home / "not-this-one"))
    defs = build_definitions(REPO / "silos.yaml", deployment.name, deployment.home)
    governed = materialize_groups(defs, {"governed"})
    assert governed.success
    result = build_marts(deployment, dbt_marts)
    assert result.success
    return deployment, result


@pytest.fixture(scope="module")
def built_local(local_deployment, dbt_marts, monkeypatch_module):
    return governed_then_marts(local_deployment, dbt_marts, monkeypatch_module)


@pytest.fixture(scope="module")
def built_prod(prod_deployment, dbt_marts, monkeypatch_module):
    return governed_then_marts(prod_deployment, dbt_marts, monkeypatch_module)


@pytest.fixture(scope="module", params=["local", "prod"])
def built(request):
    return request.getfixturevalue(f"built_{request.param}")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def marts_table(deployment, name: str) -> list[dict]:
    """A mart's rows where the deployment keeps them: the DuckDB file (local), PostgreSQL (prod)."""
    if deployment.name == "prod":
        with psycopg.connect(deployment.env["FEDLAKE_GOVERNED_DSN"]) as conn:
            cursor = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier("marts", name)))
            columns = [c.name for c in cursor.description]
            return [dict(zip(columns, row)) for row in cursor.fetchall()]
    with duckdb.connect(str(deployment.home / MARTS_DATABASE), read_only=True) as db:
        cursor = db.execute(f"SELECT * FROM marts.{name}")
        columns = [c[0] for c in cursor.description]
        return [dict(zip(columns, row)) for row in cursor.fetchall()]


def governed_rows(deployment, table: str) -> list[dict]:
    """The governed table as fedlake's own connector reads it: the reference the marts must match."""
    with open_governed_zone(deployment.catalog, deployment.name, deployment.home) as zone:
        return zone.execute(f"SELECT * FROM {table}").read_all().to_pylist()


def test_marts_sit_downstream_of_the_governed_assets_in_group_marts(catalog, dbt_marts, tmp_path):
    specs = {spec.key: spec for spec in dbt_marts.specs}
    for mart in MARTS:
        assert specs[dg.AssetKey([MARTS_GROUP, mart])].group_name == MARTS_GROUP
    deps = {key: {dep.asset_key for dep in spec.deps} for key, spec in specs.items()}
    assert dg.AssetKey(["governed", "customer_credit_features"]) in deps[dg.AssetKey([MARTS_GROUP, "stg_customer_credit_features"])]
    assert dg.AssetKey(["governed", "aml_account_signals"]) in deps[dg.AssetKey([MARTS_GROUP, "stg_aml_account_signals"])]
    assert dg.AssetKey([MARTS_GROUP, "aml_account_alerts"]) in deps[dg.AssetKey([MARTS_GROUP, "aml_alert_summary"])]

    # together with the platform's assets (whether platform_defs adds the marts itself or not) the
    # dbt sources resolve to the governed assets themselves
    defs = build_definitions(REPO / "silos.yaml", "local", tmp_path)
    if dg.AssetKey([MARTS_GROUP, "customer_risk_profile"]) not in {spec.key for spec in defs.resolve_all_asset_specs()}:
        dbt = dbt_marts_resource(catalog, "local", tmp_path)
        defs = dg.Definitions.merge(defs, dg.Definitions(assets=[dbt_marts], resources={DBT_RESOURCE_KEY: dbt}))
    graph = defs.resolve_asset_graph()
    profile = graph.get(dg.AssetKey([MARTS_GROUP, "customer_risk_profile"]))
    governed = graph.get(dg.AssetKey(["governed", "customer_credit_features"]))
    assert governed.is_materializable and not governed.is_external
    assert governed.key in graph.get_ancestor_asset_keys(profile.key)

    checks = {key.name for key in dbt_marts.check_keys if key.asset_key == dg.AssetKey([MARTS_GROUP, "customer_risk_profile"])}
    assert {"unique_customer_risk_profile_band_key", "customer_risk_profile_counts_every_loan"} <= checks


def test_every_dbt_test_ran_as_a_passing_asset_check(built, dbt_marts):
    deployment, result = built
    materialized = {event.asset_key for event in result.get_asset_materialization_events()}
    assert {dg.AssetKey([MARTS_GROUP, mart]) for mart in MARTS} <= materialized
    evaluations = result.get_asset_check_evaluations()
    assert {e.asset_check_key for e in evaluations} == set(dbt_marts.check_keys)
    assert all(e.passed for e in evaluations), [e.asset_check_key for e in evaluations if not e.passed]


def test_risk_profile_counts_every_loan_per_dimension_and_ranks_risk(built):
    deployment, _ = built
    loans = governed_rows(deployment, "customer_credit_features")
    assert len(loans) == deployment.report.rows["eu_core"]["loans"]
    defaulted = sum(1 for loan in loans if loan["defaulted"])
    profile = marts_table(deployment, "customer_risk_profile")
    assert Counter(row["risk_dimension"] for row in profile) == {d: 3 for d in ("dti", "gambling", "cross_border", "overall")}
    for dimension in ("dti", "gambling", "cross_border", "overall"):
        rows = [row for row in profile if row["risk_dimension"] == dimension]
        assert sum(row["loans"] for row in rows) == len(loans), dimension
        assert sum(row["defaulted_loans"] for row in rows) == defaulted, dimension
    for row in profile:
        if row["loans"]:
            assert 0 <= row["default_rate"] <= 1
            assert row["default_rate"] == pytest.approx(row["defaulted_loans"] / row["loans"])
        else:
            assert row["default_rate"] is None

    # the dti bands are what they say: recount them from the governed loans
    low, high = VARS["risk_band_thresholds"]["dti"]
    dti = {row["band"]: row["loans"] for row in profile if row["risk_dimension"] == "dti"}
    assert dti == {
        "low": sum(1 for loan in loans if loan["dti"] < low),
        "medium": sum(1 for loan in loans if low <= loan["dti"] < high),
        "high": sum(1 for loan in loans if loan["dti"] >= high),
    }
    overall = {row["band"]: row for row in profile if row["risk_dimension"] == "overall"}
    assert overall["high"]["loans"] > 0 and overall["high"]["default_rate"] > overall["low"]["default_rate"]


def rules_fired(account: dict) -> set[str]:
    rules = VARS["aml_rules"]
    share = account["cross_border"] / account["transactions"] if account["transactions"] else 0
    fired = set()
    if account["near_threshold_cash"] >= rules["near_threshold_cash_min_deposits"]:
        fired.add("near_threshold_cash")
    if (
        account["linked_accounts_abroad"] >= rules["linked_abroad_min_accounts"]
        and account["cross_border_eur"] >= rules["linked_abroad_min_cross_border_eur"]
    ):
        fired.add("linked_abroad")
    if share >= rules["cross_border_min_share"] and account["cross_border_eur"] >= rules["cross_border_min_eur"]:
        fired.add("cross_border")
    return fired


def test_aml_alerts_are_exactly_the_accounts_the_rules_flag(built):
    deployment, _ = built
    signals = {row["account_id"]: row for row in governed_rows(deployment, "aml_account_signals")}
    expected = {account: fired for account, row in signals.items() if (fired := rules_fired(row))}
    alerts = marts_table(deployment, "aml_account_alerts")
    assert expected and {a["account_id"]: set(a["alert_rules"].split(", ")) for a in alerts} == expected
    for alert in alerts:
        assert alert["rules_fired"] == len(expected[alert["account_id"]])
        assert alert["region"] == signals[alert["account_id"]]["region"]

    # the structuring the demo bank planted is caught by the near-threshold cash rule
    master = PSEUDONYM_KEY.encode() if deployment.name == "prod" else pseudonym_key(deployment.home)
    key = derive_key(master, "aml", "account")  # accounts are pseudonymized in the account domain for AML
    patterns = pq.read_table(deployment.home / "truth" / "aml_patterns.parquet").to_pylist()
    structuring = {p["pattern_id"] for p in patterns if p["kind"] == "structuring"}
    members = pq.read_table(deployment.home / "truth" / "aml_pattern_accounts.parquet").to_pylist()
    planted = {
        pseudonym(m["account_id"], key)
        for m in members
        if m["pattern_id"] in structuring
    }
    assert planted and all("near_threshold_cash" in expected.get(account, ()) for account in planted)

    summary = {row["region"]: row for row in marts_table(deployment, "aml_alert_summary")}
    assert set(summary) == {row["region"] for row in signals.values()}
    for region, row in summary.items():
        assert row["accounts"] == sum(1 for s in signals.values() if s["region"] == region)
        in_region = [a for a in alerts if a["region"] == region]
        assert row["alerted_accounts"] == len(in_region)
        assert row["near_threshold_cash_alerts"] == sum(1 for a in in_region if a["near_threshold_cash_alert"])
        assert 0 <= row["alert_rate"] <= 1


def test_only_the_committed_version_of_the_governed_lake_is_read(local_deployment, dbt_marts, tmp_path):
    """A governed write in progress leaves Parquet files in the table's folder that no Delta commit
    names yet; the marts must not count their rows."""
    deployment = local_deployment
    zone = deployment.home / "governed" / "zone" / "customer_credit_features"
    committed = sorted(zone.glob("*.parquet"))
    assert committed and (zone / "_delta_log").is_dir()
    in_progress = zone / "part-99999-inflight-c000.snappy.parquet"
    shutil.copyfile(committed[0], in_progress)
    try:
        assert build_marts(deployment, dbt_marts).success
    finally:
        in_progress.unlink()
    profile = marts_table(deployment, "customer_risk_profile")
    assert sum(r["loans"] for r in profile if r["risk_dimension"] == "dti") == deployment.report.rows["eu_core"]["loans"]


def test_a_missing_governed_table_fails_with_a_clear_error(catalog, dbt_marts, tmp_path):
    resource = dbt_marts_resource(catalog, "local", tmp_path)
    result = dg.materialize(
        [dbt_marts], resources={DBT_RESOURCE_KEY: resource}, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert "no Parquet files for table 'customer_credit_features'" in message
    assert "materialize the Dagster asset governed/customer_credit_features first" in message


def by_key(rows: list[dict], key: str) -> dict:
    """Rows by key, numbers as floats: PostgreSQL sums integers to NUMERIC, DuckDB to HUGEINT."""
    def value(v):
        return float(v) if isinstance(v, (int, float, Decimal)) and not isinstance(v, bool) else v
    return {row[key]: {column: value(v) for column, v in row.items()} for row in rows}


def approximately(row: dict) -> dict:
    """Numbers within rounding (each engine adds floats in its own order); text, flags and nulls exactly."""
    return {column: pytest.approx(v, rel=1e-9) if isinstance(v, float) else v for column, v in row.items()}


def test_prod_marts_are_postgres_tables_holding_the_rows_of_the_local_marts(built_local, built_prod):
    local, _ = built_local
    prod, result = built_prod
    with psycopg.connect(prod.env["FEDLAKE_GOVERNED_DSN"]) as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'marts'")}
    assert set(MARTS) <= tables
    assert not (prod.home / MARTS_DATABASE).exists()  # no DuckDB file on the side in prod

    # the same seed in both deployments: the marts computed by dbt-postgres equal dbt-duckdb's
    for mart, key in (("customer_risk_profile", "band_key"), ("aml_alert_summary", "region")):
        expected, got = by_key(marts_table(local, mart), key), by_key(marts_table(prod, mart), key)
        assert got.keys() == expected.keys(), mart
        for k, row in expected.items():
            assert got[k] == approximately(row), (mart, k)
    # account ids are pseudonyms under each deployment's key; the alerts agree rule by rule
    def fired(deployment) -> Counter:
        return Counter((a["region"], a["alert_rules"]) for a in marts_table(deployment, "aml_account_alerts"))

    assert fired(prod) == fired(local) and sum(fired(prod).values()) > 0

    counts = {
        e.asset_key.path[-1]: e.step_materialization_data.materialization.metadata["dagster/row_count"].value
        for e in result.get_asset_materialization_events()
    }
    assert counts["customer_risk_profile"] == len(marts_table(prod, "customer_risk_profile"))
    assert counts["aml_account_alerts"] == len(marts_table(prod, "aml_account_alerts"))

    # the governed password reached dbt, yet none of its artifacts or logs holds it
    password = conninfo_to_dict(prod.env["FEDLAKE_GOVERNED_DSN"])["password"].encode()
    artifacts = [path for path in (prod.home / "dbt").rglob("*") if path.is_file()]
    assert artifacts and not [path.name for path in artifacts if password in path.read_bytes()]


def test_prod_without_the_governed_dsn_fails_in_one_line_naming_the_variable(catalog, dbt_marts, tmp_path, monkeypatch):
    monkeypatch.delenv("FEDLAKE_GOVERNED_DSN", raising=False)
    resource = dbt_marts_resource(catalog, "prod", tmp_path)
    result = dg.materialize(
        [dbt_marts], resources={DBT_RESOURCE_KEY: resource}, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.user_failure_data.description
    assert "\n" not in message and "Traceback" not in message
    assert "governed_zone.connection.prod.dsn" in message and "FEDLAKE_GOVERNED_DSN is not set" in message


def test_the_dsn_reaches_dbt_as_libpq_variables_with_the_password_kept_secret():
    where = ("silos.yaml", "governed_zone.connection.prod.dsn")
    env = libpq_environment("postgresql://marts:p%40ss@db.internal:6432/governed?sslmode=verify-full", where)
    assert env == {
        "PGHOST": "db.internal", "PGPORT": "6432", "PGUSER": "marts", "PGDATABASE": "governed",
        "PGSSLMODE": "verify-full", PASSWORD_ENV: "p@ss",
    }
    assert PASSWORD_ENV.startswith("DBT_ENV_SECRET_")  # dbt scrubs these values from its logs
    with pytest.raises(ConfigError, match=r"governed_zone.connection.prod.dsn: .*must name host"):
        libpq_environment("dbname=governed user=marts", where)
    with pytest.raises(ConfigError, match=r"keepalives have no libpq environment variable"):
        libpq_environment("host=h user=u dbname=d keepalives=1", where)
    with pytest.raises(ConfigError, match=r"port must be one number"):
        libpq_environment("postgresql://u@h:5432,5433/d", where)
    with pytest.raises(ConfigError, match=r"does not parse") as refused:
        libpq_environment("host=h password=s3cret-in-a-broken-dsn user", where)
    assert "s3cret" not in str(refused.value)  # a DSN that does not parse is not echoed
