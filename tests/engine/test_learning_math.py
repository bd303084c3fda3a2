"""The arithmetic of federated learning, on values small enough to check by hand: FedAvg, the
FedProx pull, the evaluation metrics, and the weights that cross the wire."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch

from fedlake.learning import weights as wire
from fedlake.learning.aggregate import FedAvg, FedProx, fedavg, strategy_from_dict
from fedlake.learning.data import TabularData
from fedlake.learning.metrics import evaluate, metrics_from_histograms, score_histogram
from fedlake.learning.models import AMLNet, CreditNet, ModelSpec
from fedlake.learning.train import TrainConfig, proximal_term, train_local


def test_fedavg_weights_each_silo_by_its_sample_count():
    a = {"w": np.array([0.0, 2.0], dtype=np.float32), "b": np.array([1.0], dtype=np.float32), "steps": np.array(7)}
    b = {"w": np.array([4.0, 6.0], dtype=np.float32), "b": np.array([5.0], dtype=np.float32), "steps": np.array(3)}
    merged = fedavg([(a, 100), (b, 300)])
    np.testing.assert_allclose(merged["w"], [3.0, 5.0])  # 0.25 * a + 0.75 * b
    np.testing.assert_allclose(merged["b"], [4.0])
    assert merged["w"].dtype == np.float32
    assert int(merged["steps"]) == 3  # counters are not averaged: the largest silo's is kept
    np.testing.assert_allclose(fedavg([(a, 1)])["w"], a["w"])


def test_fedavg_refuses_mismatched_or_empty_results():
    with pytest.raises(ValueError, match="no results"):
        fedavg([])
    with pytest.raises(ValueError, match="different tensors"):
        fedavg([({"w": np.zeros(2)}, 1), ({"v": np.zeros(2)}, 1)])
    with pytest.raises(ValueError, match="positive sample count"):
        fedavg([({"w": np.zeros(2)}, 0)])


def test_strategies_send_their_mu_and_round_trip_as_json():
    assert FedAvg().configure({"lr": 0.1, "mu": 0.5})["mu"] == 0.0
    assert FedProx(mu=0.2).configure({"lr": 0.1})["mu"] == 0.2
    assert strategy_from_dict(FedProx(mu=0.3).to_dict()) == FedProx(mu=0.3)
    assert strategy_from_dict(FedAvg().to_dict()) == FedAvg()
    with pytest.raises(ValueError, match="mu > 0"):
        FedProx(mu=0)
    with pytest.raises(ValueError, match="unknown aggregation strategy 'scaffold'"):
        strategy_from_dict({"name": "scaffold"})


def test_the_proximal_term_is_the_squared_distance_to_the_global_weights():
    model = CreditNet(3, hidden=4)
    anchor = [p.detach().clone() for p in model.parameters()]
    assert float(proximal_term(model, anchor).detach()) == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    n_params = sum(p.numel() for p in model.parameters())
    assert float(proximal_term(model, anchor).detach()) == pytest.approx(0.25 * n_params)


def test_fedprox_keeps_local_training_closer_to_the_global_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=400) > 1.0).astype(np.float32)  # one silo's skewed view
    spec = ModelSpec("toy", "credit", {"n_features": 3, "hidden": 8})
    start = wire.model_weights(spec.build(seed=1))

    def drift(mu: float) -> float:
        model = wire.load_into(spec.build(), start)
        train_local(model, TabularData(x, y), TrainConfig(epochs=5, lr=0.02, batch_size=32, mu=mu, device="cpu"))
        after = wire.model_weights(model)
        return float(sum(np.sum((after[k] - start[k]) ** 2) for k in start if k not in ("mean", "std")))

    free, pulled = drift(0.0), drift(5.0)
    assert pulled < 0.5 * free, (free, pulled)


def test_metrics_match_hand_computed_values():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    m = evaluate(scores, labels, bins=2)
    assert m["auc"] == pytest.approx(0.75)  # 3 of the 4 positive-negative pairs are ordered right
    assert m["pr_auc"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)  # recall steps at precision 1 and 2/3
    assert m["brier"] == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    # bin [0, 0.5): 3 scores, mean 0.2833, 1 positive; bin [0.5, 1]: 0.8, 1 positive
    assert m["ece"] == pytest.approx(0.75 * abs(1 / 3 - 0.85 / 3) + 0.25 * abs(1 - 0.8))
    assert [b["count"] for b in m["calibration"]] == [3, 1]
    assert m["roc"]["fpr"][0] == 0.0 and m["roc"]["tpr"][-1] == 1.0


def test_ties_count_half_and_single_class_has_no_auc():
    tied = evaluate(np.full(4, 0.5), np.array([0, 1, 0, 1]))
    assert tied["auc"] == pytest.approx(0.5) and tied["pr_auc"] == pytest.approx(0.5)
    assert evaluate(np.array([0.2, 0.3]), np.array([0, 0]))["auc"] is None
    assert evaluate(np.array([0.2, 0.3]), np.array([1, 1]))["auc"] is None
    with pytest.raises(ValueError, match="probabilities"):
        evaluate(np.array([1.5]), np.array([1]))


def test_pooled_metrics_from_silo_histograms_match_the_pooled_scores():
    rng = np.random.default_rng(3)
    silos = []
    for n in (3000, 2000, 1000):
        labels = (rng.random(n) < 0.02).astype(float)
        scores = 1 / (1 + np.exp(-(rng.normal(-5, 1.5, n) + 3 * labels)))
        silos.append((scores, labels))
    exact = evaluate(np.concatenate([s for s, _ in silos]), np.concatenate([y for _, y in silos]))
    merged = metrics_from_histograms([score_histogram(s, y) for s, y in silos])
    assert merged["n"] == exact["n"] and merged["positives"] == exact["positives"]
    assert merged["auc"] == pytest.approx(exact["auc"], abs=0.005)
    assert merged["pr_auc"] == pytest.approx(exact["pr_auc"], abs=0.02)
    assert merged["brier"] == pytest.approx(exact["brier"], rel=1e-9)
    assert merged["ece"] == pytest.approx(exact["ece"], abs=0.01)


def test_weights_cross_the_wire_as_base64_npz_and_never_unpickle():
    model = ModelSpec("aml", "aml", {"buckets": 64}).build(seed=0)
    payload = wire.encode(wire.model_weights(model))
    assert isinstance(payload, str)
    restored = wire.load_into(ModelSpec("aml", "aml", {"buckets": 64}).build(seed=5), wire.decode(payload))
    for k, v in model.state_dict().items():
        assert torch.equal(v, restored.state_dict()[k])
    pickled = io.BytesIO()
    np.savez(pickled, evil=np.array([{"run": "code"}], dtype=object))
    with pytest.raises(wire.WeightsError, match="without pickles"):
        wire.decode(base64.b64encode(pickled.getvalue()).decode())
    with pytest.raises(wire.WeightsError, match="not base64"):
        wire.decode("not base64 !")
    with pytest.raises(wire.WeightsError, match="another model spec"):
        wire.load_into(AMLNet(16, buckets=128), wire.decode(payload))


def test_a_model_spec_rebuilds_the_same_model_and_rejects_unknown_settings():
    spec = ModelSpec("aml_model", "aml", {"buckets": 256, "text_dim": 8})
    again = ModelSpec.from_dict(spec.to_dict())
    assert again == spec and again.params["hidden"] == 32
    a, b = spec.build(seed=3), again.build(seed=3)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    with pytest.raises(ValueError, match="unknown parameter"):
        ModelSpec("m", "aml", {"layers": 3})
    with pytest.raises(ValueError, match="unknown kind 'gbm'"):
        ModelSpec("m", "gbm")
    with pytest.raises(ValueError, match="unknown training hyper-parameter"):
        TrainConfig.from_dict({"epochs": 1, "momentum": 0.9})
