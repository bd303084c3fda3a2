"""The credit model against its baselines, and the model registry: versions, cards, promotion."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedlake.learning import weights as wire
from fedlake.learning.credit import ALL_REGION_FEATURES, EU_ONLY_FEATURES, credit_comparison, split, train_credit
from fedlake.learning.data import TabularData, credit_examples
from fedlake.learning.metrics import evaluate
from fedlake.learning.registry import ModelRegistry, RegistryError
from fedlake.learning.train import TrainConfig, predict
from fedlake.silos import open_silo
from fedlake.synth.default_model import compute_default_features

FAST = TrainConfig(epochs=15, lr=0.005, batch_size=64, device="cpu")


def read(deployment, silo, table):
    with open_silo(deployment.catalog.silo(silo), "local", deployment.home) as connector:
        return connector.execute(f"SELECT * FROM {table}").read_all()


@pytest.fixture(scope="module")
def credit_table(local_deployment) -> pa.Table:
    """customer_credit_features as the governed zone holds it, rebuilt here by the bank's evaluator
    from the silos (the Dagster asset builds the same table through the federated planner)."""
    d = local_deployment
    regions = {"EU": "eu_core", "US": "us_lake", "SG": "sg_lake"}
    tables = {r: {t: read(d, s, t) for t in ("customers", "accounts", "transactions")} for r, s in regions.items()}
    everywhere = {row["national_id"]: row for row in compute_default_features(tables).to_pylist()}
    home = {row["national_id"]: row for row in compute_default_features({"EU": tables["EU"]}).to_pylist()}
    truth = {row["loan_id"]: row for row in pq.read_table(d.home / "truth" / "loan_truth.parquet").to_pylist()}
    rows = []
    for loan in read(d, "eu_core", "loans").to_pylist():
        t = truth[loan["loan_id"]]
        e, h = everywhere[t["national_id"]], home.get(t["national_id"])
        row = {k: loan[k] for k in ("loan_id", "principal", "rate", "term_months", "defaulted")}
        row.update(income=t["income"], employment_years=t["employment_years"], dti=t["dti"], transactions=e["n_transactions"])
        for f in ("spending_volatility", "gambling_share", "cash_advance_share", "cross_border_share"):
            row[f] = e[f]
            row[f"home_{f}"] = h[f] if h else 0.0
        row["home_transactions"] = h["n_transactions"] if h else 0
        rows.append(row)
    return pa.Table.from_pylist(rows)


def test_credit_model_and_baselines_are_evaluated_on_the_same_held_out_loans(local_deployment, credit_table):
    truth = pq.read_table(local_deployment.home / "truth" / "loan_truth.parquet")
    model, comparison = credit_comparison(credit_table, truth, FAST)
    assert set(comparison) == {"all_regions", "eu_only", "oracle"}
    held_out = int(split(credit_table).sum())
    assert {m["n"] for m in comparison.values()} == {held_out}
    assert len({m["positives"] for m in comparison.values()}) == 1
    assert all(0.5 < m["auc"] <= 1.0 for m in comparison.values())
    assert comparison["oracle"]["auc"] > comparison["eu_only"]["auc"]  # the EU silo alone sees too little
    assert model.features == ALL_REGION_FEATURES and model.n_train + held_out == credit_table.num_rows

    # the stored model scores raw rows exactly as it did at training: standardization travels with it
    net = wire.load_into(model.spec.build(), model.weights)
    x, y = credit_examples(credit_table, ALL_REGION_FEATURES)
    mask = split(credit_table)
    again = evaluate(predict(net, TabularData(x[mask], y[mask]), device="cpu"), y[mask])
    assert again["auc"] == pytest.approx(model.metrics["auc"])

    with pytest.raises(ValueError, match=r"column\(s\) \['home_income'\] not in the table"):
        train_credit(credit_table, (*EU_ONLY_FEATURES, "home_income"), FAST)


def test_registry_versions_cards_and_a_promotion_that_refuses_a_worse_challenger(credit_table, tmp_path):
    registry = ModelRegistry(tmp_path / "governed" / "models")
    good = train_credit(credit_table, ALL_REGION_FEATURES, FAST)
    v1 = registry.register(
        "credit_scoring_model", good.spec, good.weights, metrics=good.metrics, hyper_parameters=good.config.to_dict(),
        fingerprints={"governed.customer_credit_features": good.fingerprint},
        policy_decisions=[{"asset": "customer_credit_features", "purpose": "credit_scoring", "decision": "allowed"}],
        comparisons={"oracle": {"auc": 0.9}}, description="Default probability of a loan from cross-silo behaviour.",
    )
    assert v1.version == 1 and registry.champion("credit_scoring_model") is None
    for name in ("weights.npz", "model.json", "model_card.md", "roc.png", "calibration.png"):
        assert (v1.path / name).stat().st_size > 0, name
    assert (v1.path / "roc.png").read_bytes()[:4] == b"\x89PNG"
    card = v1.card()
    assert "# credit_scoring_model v1" in card and "![roc](roc.png)" in card and "| oracle |" in card
    assert good.fingerprint in card and "trained without differential privacy" in card
    assert "data:image/png;base64," in v1.card(inline_images=True)
    record = json.loads((v1.path / "model.json").read_text())
    assert record["metrics"]["auc"] == pytest.approx(good.metrics["auc"]) and record["hyper_parameters"]["epochs"] == 15

    first = registry.promote("credit_scoring_model", 1, floor=0.55)
    assert first.promoted and "no champion" in first.reason
    assert registry.champion("credit_scoring_model").version == 1

    # a challenger that has learned nothing scores worse on held-out data and is refused
    blind = train_credit(credit_table, ALL_REGION_FEATURES, TrainConfig(epochs=1, lr=1e-6, batch_size=4096, device="cpu"), seed=9)
    v2 = registry.register("credit_scoring_model", blind.spec, blind.weights, metrics=blind.metrics)
    refused = registry.promote("credit_scoring_model", v2.version, floor=0.0)
    assert not refused.promoted and "does not beat champion v1" in refused.reason
    assert registry.champion("credit_scoring_model").version == 1
    assert [v.version for v in registry.versions("credit_scoring_model")] == [1, 2]

    # re-scored now on the same held-out loans, the verdict is the same
    x, y = credit_examples(credit_table, ALL_REGION_FEATURES)
    mask = split(credit_table)
    rescore = lambda model: evaluate(predict(model, TabularData(x[mask], y[mask]), device="cpu"), y[mask])["auc"]  # noqa: E731
    assert not registry.promote("credit_scoring_model", 2, floor=0.0, held_out=rescore).promoted
    assert registry.promote("credit_scoring_model", 1).reason == "v1 is already the champion"

    # a floor stops a weak first model; unknown versions are named
    other = ModelRegistry(tmp_path / "other")
    other.register("m", blind.spec, blind.weights, metrics={**blind.metrics, "auc": 0.51})
    assert not other.promote("m", 1, floor=0.6).promoted and other.champion("m") is None
    with pytest.raises(RegistryError, match="has no version 7"):
        registry.version("credit_scoring_model", 7)
    np.testing.assert_allclose(registry.version("credit_scoring_model", 1).weights()["mean"], good.weights["mean"])
