"""The federated IO manager keeps data in its silo: materializing moves no rows out, a failure
leaves no table behind, and downstream assets receive handles, not data. Run on both deployments."""

from __future__ import annotations

import dagster as dg
import pytest

from assets.sources import source_assets
from fedlake.relation import Relation, RelationHandle
from fedlake.silos import open_silo
from platform_defs.definitions import build_definitions
from tests.conftest import REPO, materialize_groups

SILOS = ("eu_core", "us_lake", "sg_lake")


def definitions(deployment):
    return build_definitions(REPO / "silos.yaml", deployment.name, deployment.home)


def in_silo(deployment, silo: str, sql: str) -> list[tuple]:
    """Ask the silo directly, as its owner would, to check what the assets did."""
    with open_silo(deployment.catalog.silo(silo), deployment.name, deployment.home) as connector:
        return [tuple(row.values()) for row in connector.execute(sql).read_all().to_pylist()]


def test_everything_materializes_in_place_and_moves_no_rows(deployment):
    defs = definitions(deployment)
    result = materialize_groups(defs, set(SILOS))
    assert result.success

    observed = {
        tuple(e.asset_key.path): e.event_specific_data.asset_observation.metadata
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    }
    for silo, tables in deployment.report.rows.items():
        for table, rows in tables.items():
            assert observed[(silo, table)]["dagster/row_count"].value == rows

    for silo in SILOS:
        [materialization] = result.asset_materializations_for_node(f"{silo}__monthly_spending")
        meta = {k: v.value for k, v in materialization.metadata.items()}
        assert meta["location"] == f"{silo}.monthly_spending"
        # measured on every silo's connector counters during the run: nothing crossed any border
        assert meta["rows_moved_out"] == 0 and meta["bytes_moved_out"] == 0
        assert {f"bytes_out/{silo}" for silo in SILOS} <= set(meta)
        assert all(meta[f"bytes_out/{silo}"] == 0 for silo in SILOS)
        [(expected_rows, expected_debits)] = in_silo(
            deployment,
            silo,
            "SELECT count(*), sum(debits) FROM (SELECT a.customer_id, date_trunc('month', t.ts), "
            "sum(CASE WHEN direction = 'debit' THEN amount ELSE 0 END) AS debits "
            "FROM transactions t JOIN accounts a ON a.account_id = t.account_id GROUP BY 1, 2) AS m",
        )
        assert meta["dagster/row_count"] == expected_rows > 0
        [(debits,)] = in_silo(deployment, silo, "SELECT sum(debit_total) FROM monthly_spending")
        assert debits == pytest.approx(expected_debits, rel=1e-9)
        # a lake's materialization is one Delta commit, whose version the metadata names
        with open_silo(deployment.catalog.silo(silo), deployment.name, deployment.home) as connector:
            version = getattr(connector, "table_version", lambda table: None)("monthly_spending")
        assert meta.get("delta_version") == version and (version is None) == (silo == "eu_core")


def broken_asset(silo: str, sql: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=[silo, "broken_spending"],
        ins={"transactions": dg.AssetIn(key=[silo, "transactions"], input_manager_key="federated_io_manager")},
        io_manager_key="federated_io_manager",
    )
    def broken(transactions: RelationHandle) -> Relation:
        return Relation(sql=sql.format(t=transactions.ref), inputs=(transactions,), purpose="credit_scoring")

    return broken


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT account_id, no_such_column FROM {t}",  # refused before any row is written
        "SELECT account_id, CAST(memo AS INTEGER) AS memo_number FROM {t}",  # a denied column: refused
        "SELECT account_id, CAST(currency AS INTEGER) AS currency_number FROM {t}",  # fails while writing rows
    ],
    ids=["unknown-column", "denied-column", "fails-mid-write"],
)
@pytest.mark.parametrize("silo", SILOS)
def test_failed_materialization_leaves_no_table(deployment, silo, sql):
    defs = definitions(deployment)
    result = dg.materialize(
        [*source_assets(deployment.catalog), broken_asset(silo, sql)],
        resources=defs.resources,
        selection=[dg.AssetKey([silo, "broken_spending"])],
        raise_on_error=False,
    )
    assert not result.success
    with open_silo(deployment.catalog.silo(silo), deployment.name, deployment.home) as connector:
        assert "broken_spending" not in connector.list_tables()
    if silo == "eu_core":
        leftovers = in_silo(
            deployment, silo, "SELECT table_name FROM information_schema.tables WHERE table_name LIKE '%broken%'"
        )
        assert leftovers == [], "no staging table may survive a failed materialization"


def test_downstream_assets_receive_a_handle_not_data(local_deployment):
    received: dict[str, object] = {}

    @dg.asset(
        key=["sg_lake", "big_spenders"],
        ins={"monthly": dg.AssetIn(key=["sg_lake", "monthly_spending"])},
        io_manager_key="federated_io_manager",
    )
    def big_spenders(monthly: RelationHandle) -> Relation:
        received["monthly"] = monthly
        return Relation(
            sql=f"SELECT customer_id FROM {monthly.ref} GROUP BY customer_id HAVING sum(debit_total) > 1000",
            inputs=(monthly,), purpose="credit_scoring",
        )

    defs = definitions(local_deployment)
    monthly_spending = next(a for a in defs.assets if dg.AssetKey(["sg_lake", "monthly_spending"]) in a.keys)
    result = dg.materialize(
        [*source_assets(local_deployment.catalog), monthly_spending, big_spenders], resources=defs.resources,
        selection=[dg.AssetKey(["sg_lake", "monthly_spending"]), dg.AssetKey(["sg_lake", "big_spenders"])],
    )
    assert result.success
    handle = received["monthly"]
    assert isinstance(handle, RelationHandle)
    upstream_rows = result.asset_materializations_for_node("sg_lake__monthly_spending")[0].metadata["dagster/row_count"]
    assert handle.rows == upstream_rows.value
    assert handle.qualified_name == "sg_lake.monthly_spending"
    assert [name for name, _ in handle.columns][:2] == ["customer_id", "month"]
    [(expected,)] = in_silo(
        local_deployment,
        "sg_lake",
        "SELECT count(*) FROM (SELECT customer_id FROM monthly_spending GROUP BY 1 HAVING sum(debit_total) > 1000) AS b",
    )
    assert result.asset_materializations_for_node("sg_lake__big_spenders")[0].metadata["dagster/row_count"].value == expected


def test_a_relation_across_silos_is_refused_with_the_reason(local_deployment):
    @dg.asset(
        key=["sg_lake", "mixed"],
        ins={
            "eu": dg.AssetIn(key=["eu_core", "customers"], input_manager_key="federated_io_manager"),
            "sg": dg.AssetIn(key=["sg_lake", "customers"], input_manager_key="federated_io_manager"),
        },
        io_manager_key="federated_io_manager",
    )
    def mixed(eu: RelationHandle, sg: RelationHandle) -> Relation:
        return Relation(sql=f"SELECT * FROM {eu.ref} JOIN {sg.ref} USING (national_id)", inputs=(eu, sg), purpose="credit_scoring")

    defs = definitions(local_deployment)
    result = dg.materialize(
        [*source_assets(local_deployment.catalog), mixed], resources=defs.resources,
        selection=[dg.AssetKey(["sg_lake", "mixed"])], raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "reads from 2 silos (eu_core.customers, sg_lake.customers)" in failure.step_failure_data.error.cause.message
