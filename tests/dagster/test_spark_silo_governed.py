"""The compliance-gated join layer with sg_lake's agent on Spark (`engine: spark`, local[2]): the
governed assets materialize through dg.materialize, their features are the planted ones, and the
sg_lake fragments were Spark's (its views over the lake's files are in the process's session)."""

from __future__ import annotations

import dagster as dg
import pyarrow.parquet as pq
import pytest
import yaml

from fedlake.catalog import load_catalog
from fedlake.silos import open_governed_zone
from fedlake.silos.spark_session import spark_session
from platform_defs.definitions import build_definitions
from resources.materialization_metadata import BYTES_OUT_PREFIX
from tests.conftest import REPO

SPARK_SILO = "sg_lake"


def on_spark(tmp_path) -> str:
    """silos.yaml with sg_lake's local agent on Spark and a governed zone of its own (the DuckDB run's stays)."""
    raw = yaml.safe_load((REPO / "silos.yaml").read_text())
    raw["silos"][SPARK_SILO]["connection"]["local"].update({"engine": "spark", "spark_master": "local[2]"})
    raw["governed_zone"]["connection"]["local"] = {"path": "governed_spark/zone"}
    path = tmp_path / "silos.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_governed_layer_materializes_with_sg_lake_on_spark(local_deployment, tmp_path):
    path = on_spark(tmp_path)
    defs = build_definitions(path, "local", local_deployment.home, policy_path=REPO / "policies.yaml")
    result = dg.materialize(
        [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)],
        resources=defs.resources,
        selection=dg.AssetSelection.groups("governed"),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    [credit] = result.asset_materializations_for_node("governed__customer_credit_features")
    assert credit.metadata[f"{BYTES_OUT_PREFIX}{SPARK_SILO}"].value > 0
    assert f"at silo {SPARK_SILO}" in credit.metadata["plan"].value

    with open_governed_zone(load_catalog(path), "local", local_deployment.home) as zone:
        features = zone.execute("SELECT * FROM customer_credit_features").read_all()
    truth = pq.read_table(local_deployment.home / "truth" / "loan_truth.parquet")
    assert features.num_rows == truth.num_rows
    by_loan = {row["loan_id"]: row for row in features.to_pylist()}
    for expected in truth.to_pylist():
        got = by_loan[expected["loan_id"]]
        for name in ("dti", "spending_volatility", "gambling_share", "cash_advance_share", "cross_border_share"):
            assert got[name] == pytest.approx(expected[name], abs=1e-9), name

    views = {t.name for t in spark_session("local[2]", SPARK_SILO).catalog.listTables()}
    assert any(v.startswith(f"fl_{SPARK_SILO}_transactions_") for v in views)
