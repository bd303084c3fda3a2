"""The learning actions as oracles, attacked: a client without the train role, weights crafted to
isolate one account (its largest credit, whether it is an AML case), a text embedding crafted to
count the memos holding a chosen word, unregistered or tampered versions. Each is refused, or what
leaves holds no bin of fewer than min_count accounts; the honest flow keeps its metrics."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from fedlake.agent import Forbidden, local_agent_client
from fedlake.learning import weights as wire
from fedlake.learning.agent_actions import EVALUATE_ACTION, MIN_COUNT, TRAIN_ACTION, register_learning_actions
from fedlake.learning.aggregate import FedAvg
from fedlake.learning.coordinator import FederatedTrainer
from fedlake.learning.data import AML_FEATURES, aml_examples, held_out_mask
from fedlake.learning.metrics import evaluate, metrics_from_histograms, release_histogram, score_histogram
from fedlake.learning.models import ModelSpec
from fedlake.learning.registry import ModelRegistry
from fedlake.learning.secagg.messages import ADVERTISE_ACTION, SHARE_KEYS_ACTION, UNMASK_ACTION
from fedlake.learning.text import ngram_ids
from fedlake.learning.train import DPConfig, TrainConfig, predict
from fedlake.policy.model import load_policy
from fedlake.silos import open_silo
from fedlake.synth.default_model import REGION_COUNTRIES
from tests.conftest import REPO

SILOS = ("eu_core", "us_lake", "sg_lake")
SPEC = ModelSpec("aml_model", "aml", {"buckets": 2**12})
CONFIG = TrainConfig(epochs=2, lr=0.01, batch_size=128, device="cpu")
MAX_CREDIT = AML_FEATURES.index("log_max_credit")


@pytest.fixture(scope="module")
def policy(local_deployment):
    return load_policy(REPO / "policies.yaml", local_deployment.catalog)


@pytest.fixture()
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "governed" / "models")


def learning_client(deployment, policy, silo, identity="coordinator", **options):
    client = local_agent_client(deployment.catalog, policy, silo, deployment.home, identity=identity)
    register_learning_actions(client.agent, **options)
    return client


def held_out(deployment, silo):
    """The silo's held-out accounts, read by the bank's evaluator directly from the silo."""
    spec = deployment.catalog.silo(silo)
    with open_silo(spec, "local", deployment.home) as connector:
        data = aml_examples(connector, SPEC.params["buckets"], tuple(REGION_COUNTRIES[spec.region]))
    return data.subset(held_out_mask(data.account_ids))


def isolating_weights(threshold: float) -> wire.Weights:
    """The issue's attack: every account scores the same low logit except those whose largest
    credit exceeds `threshold`, which score far higher, each in a bin of its own."""
    weights = {k: np.zeros_like(v) for k, v in wire.model_weights(SPEC.build(seed=0)).items()}
    weights["numeric.0.weight"][0, MAX_CREDIT] = 1.0
    weights["numeric.0.bias"][0] = -threshold
    weights["head.0.weight"][0, 0] = 1.0
    weights["head.2.weight"][0, 0] = 1000.0
    weights["head.2.bias"][0] = -8.0
    return weights


def word_counting_weights(word: str) -> wire.Weights:
    """The text oracle: the embedding of the word's bucket alone is non-zero, so an account's score
    says whether one of its memos holds the word, and a histogram counts those accounts."""
    weights = {k: np.zeros_like(v) for k, v in wire.model_weights(SPEC.build(seed=0)).items()}
    bucket = zlib.crc32(b"w:" + word.encode()) % SPEC.params["buckets"]
    assert bucket in ngram_ids(word, SPEC.params["buckets"])
    weights["text.weight"][bucket, 0] = 1000.0
    weights["head.0.weight"][0, 32] = 1.0
    weights["head.2.weight"][0, 0] = 1.0
    weights["head.2.bias"][0] = -8.0
    return weights


def test_a_client_without_the_train_role_may_call_no_learning_action(local_deployment, policy, registry, monkeypatch):
    analyst = local_agent_client(local_deployment.catalog, policy, "us_lake", local_deployment.home, identity="analyst")
    learning: set[str] = set()
    register = analyst.agent.register_action
    monkeypatch.setattr(analyst.agent, "register_action", lambda name, handler: (learning.add(name), register(name, handler)))
    register_learning_actions(analyst.agent, registry=registry.root)
    assert learning == {TRAIN_ACTION, EVALUATE_ACTION, ADVERTISE_ACTION, SHARE_KEYS_ACTION, UNMASK_ACTION}, "a new learning action needs its attack here"
    version = registry.register("aml_model", SPEC, wire.model_weights(SPEC.build(seed=0)))
    bodies = {
        TRAIN_ACTION: {"spec": SPEC.to_dict(), "weights": wire.encode(isolating_weights(0.0)), "config": {}},
        EVALUATE_ACTION: {"model": version.sha256},
        **{stage: {"session": "s", "participants": ["us_lake", "eu_core"], "threshold": 2}
           for stage in (ADVERTISE_ACTION, SHARE_KEYS_ACTION, UNMASK_ACTION)},
    }
    for action in sorted(learning):
        for purpose in ("aml", "analytics"):
            with pytest.raises(Forbidden, match="client 'analyst' may not train or evaluate models: it lacks the role 'train'"):
                analyst.action(action, **bodies[action], purpose=purpose)


def test_evaluation_of_weights_in_the_request_is_refused(local_deployment, policy, registry):
    client = learning_client(local_deployment, policy, "us_lake", registry=registry.root)
    crafted = wire.encode(isolating_weights(0.0))
    with pytest.raises(Exception, match=r"scores registered model versions only.*carries \['spec', 'weights'\], refused"):
        client.action(EVALUATE_ACTION, spec=SPEC.to_dict(), weights=crafted)
    registered = registry.register("aml_model", SPEC, wire.model_weights(SPEC.build(seed=0)))
    with pytest.raises(Exception, match=r"carries \['weights'\], refused"):
        client.action(EVALUATE_ACTION, model=registered.sha256, weights=crafted)
    # the coordinator's side cannot send weights either
    trainer = FederatedTrainer({"us_lake": client}, SPEC, FedAvg(), 1, 1, 60, registry.root / "_ckpt")
    with pytest.raises(TypeError, match="register the weights first"):
        trainer.evaluate(isolating_weights(0.0))


def test_evaluation_of_an_unregistered_or_tampered_version_is_refused(local_deployment, policy, registry):
    client = learning_client(local_deployment, policy, "us_lake", registry=registry.root)
    unknown = "ab" * 32
    with pytest.raises(Exception, match=f"model '{unknown}' cannot be evaluated: no registered model version has weights sha256 {unknown}"):
        client.action(EVALUATE_ACTION, model=unknown)
    with pytest.raises(Exception, match="is not a registry hash"):
        client.action(EVALUATE_ACTION, model="../../weights.npz")

    version = registry.register("aml_model", SPEC, wire.model_weights(SPEC.build(seed=0)))
    wire.save(version.path / "weights.npz", isolating_weights(0.0))  # swapped behind the registry's back
    with pytest.raises(Exception, match=f"does not match its recorded sha256 {version.sha256}"):
        client.action(EVALUATE_ACTION, model=version.sha256)

    bare = learning_client(local_deployment, policy, "us_lake")
    with pytest.raises(Exception, match="no model registry to evaluate from"):
        bare.action(EVALUATE_ACTION, model=version.sha256)


def test_a_registered_isolating_model_releases_no_bin_under_min_count(local_deployment, policy, registry):
    data = held_out(local_deployment, "us_lake")
    credits = np.sort(data.numeric[:, MAX_CREDIT])
    weights = isolating_weights(float(credits[-2] + credits[-1]) / 2)  # only the largest credit above it
    version = registry.register("aml_model", SPEC, weights)

    # the attack works on what stays in the silo: the top bin holds exactly one account
    fine = score_histogram(predict(wire.load_into(SPEC.build(), weights), data, device="cpu"), data.labels)
    counts = np.add(fine["positives"], fine["negatives"])
    assert counts[np.nonzero(counts)[0][-1]] == 1

    client = learning_client(local_deployment, policy, "us_lake", registry=registry.root)
    answer = client.action(EVALUATE_ACTION, model=version.sha256)
    assert set(answer) == {"model", "histogram", "data_fingerprint"} and answer["model"] == version.sha256
    released = answer["histogram"]
    sizes = np.add(released["positives"], released["negatives"])
    assert len(sizes) and sizes.min() >= MIN_COUNT, "a bin of fewer than min_count accounts left the silo"
    assert sizes.sum() + released["suppressed_rows"] == len(data)

    # a silo whose held-out accounts cannot fill one bin releases nothing but how many it held back
    strict = learning_client(local_deployment, policy, "us_lake", registry=registry.root, min_count=len(data) + 1)
    nothing = strict.action(EVALUATE_ACTION, model=version.sha256)["histogram"]
    assert nothing["bins"] == [] and nothing["positives"] == [] and nothing["suppressed_rows"] == len(data)
    assert metrics_from_histograms([nothing])["auc"] is None


def test_a_crafted_text_embedding_counts_no_memo(local_deployment, policy, registry):
    with open_silo(local_deployment.catalog.silo("us_lake"), "local", local_deployment.home) as connector:
        memos = connector.execute("SELECT memo FROM transactions WHERE memo IS NOT NULL LIMIT 50").read_all().column(0).to_pylist()
    word = max((w for m in memos for w in m.lower().split() if w.isalpha()), key=len)
    weights = word_counting_weights(word)
    client = learning_client(local_deployment, policy, "us_lake", registry=registry.root)

    # evaluated from the request: refused; registered, evaluated: bins of min_count accounts
    with pytest.raises(Exception, match="registered model versions only"):
        client.action(EVALUATE_ACTION, spec=SPEC.to_dict(), weights=wire.encode(weights))
    version = registry.register("aml_text_probe", SPEC, weights)
    released = client.action(EVALUATE_ACTION, model=version.sha256)["histogram"]
    assert min(np.add(released["positives"], released["negatives"])) >= MIN_COUNT

    # trained from it: only the weights, the sample count and the round's bookkeeping leave
    answer = client.action(TRAIN_ACTION, spec=SPEC.to_dict(), weights=wire.encode(weights), config=CONFIG.to_dict())
    assert set(answer) == {"weights", "n_samples", "metrics", "epsilon"}
    assert set(answer["metrics"]) <= {"steps", "train_seconds", "data_fingerprint", "dp"}
    assert "loss" not in json.dumps(answer["metrics"]) and "positives" not in json.dumps(answer["metrics"])


def test_the_honest_flow_keeps_its_metrics_within_the_binning(local_deployment, policy, registry, tmp_path):
    clients = {silo: learning_client(local_deployment, policy, silo, registry=registry.root) for silo in SILOS}
    trainer = FederatedTrainer(clients, SPEC, FedAvg(), rounds=2, min_silos=3, round_timeout_s=300,
                               checkpoint_dir=tmp_path / "ckpt", config=CONFIG)
    result = trainer.fit()
    version = registry.register("aml_model", SPEC, result.weights, fingerprints=result.fingerprints)
    assert registry.by_hash(version.sha256).version == version.version
    evaluation = trainer.evaluate(version)

    # the same held-out accounts scored in one place by the bank's evaluator: the exact metrics
    model = version.load_model(verified=True)
    parts = [held_out(local_deployment, silo) for silo in SILOS]
    scores = np.concatenate([predict(model, d, device="cpu") for d in parts])
    labels = np.concatenate([d.labels for d in parts])
    exact = evaluate(scores, labels)
    pooled = evaluation["pooled"]
    assert pooled["n"] == exact["n"] and pooled["positives"] == exact["positives"]
    assert evaluation["suppressed_rows"] == {silo: 0 for silo in SILOS}
    assert pooled["brier"] == pytest.approx(exact["brier"], rel=1e-9)
    # coarsening to released bins moves the AUC only through pairs whose bins overlap (a tie within a
    # silo's bin, an order across silos' overlapping bins): at most their share of all pairs
    releases = [release_histogram(predict(model, d, device="cpu"), d.labels, MIN_COUNT) for d in parts]
    bins = [(lo, hi, p, q) for r in releases for (lo, hi), p, q in zip(r["bins"], r["positives"], r["negatives"])]
    overlapping = sum(p * q for lo, hi, p, _ in bins for lo2, hi2, _, q in bins if lo <= hi2 and lo2 <= hi)
    assert abs(pooled["auc"] - exact["auc"]) <= overlapping / (exact["positives"] * (exact["n"] - exact["positives"])) + 1e-9
    assert pooled["ece"] == pytest.approx(exact["ece"], abs=0.02)

    recorded = registry.record_evaluation("aml_model", version.version, pooled, per_region=evaluation["per_silo"])
    assert recorded.metrics["n"] == exact["n"] and recorded.sha256 == version.sha256
    assert "| us_lake |" in recorded.card()
    with pytest.raises(Exception, match="already has its held-out metrics"):
        registry.record_evaluation("aml_model", version.version, pooled)


def test_where_the_silo_requires_dp_the_histogram_is_noised_once(local_deployment, policy, registry):
    version = registry.register("aml_model", SPEC, wire.model_weights(SPEC.build(seed=0)))
    client = learning_client(local_deployment, policy, "sg_lake", registry=registry.root, dp_required=DPConfig(noise_multiplier=1.0))
    first = client.action(EVALUATE_ACTION, model=version.sha256)["histogram"]
    assert first["noise"]["mechanism"] == "laplace" and first["noise"]["epsilon"] == 1.0
    assert client.action(EVALUATE_ACTION, model=version.sha256)["histogram"] == first, "a second ask must not draw fresh noise"
    assert all(p >= 0 for p in first["positives"]) and all(q >= 0 for q in first["negatives"])


def test_release_merges_a_lone_account_and_keeps_the_ranking():
    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.uniform(0.001, 0.02, 300), [0.999]])
    labels = np.concatenate([np.zeros(300), [1.0]])
    released = release_histogram(scores, labels, MIN_COUNT)
    sizes = np.add(released["positives"], released["negatives"])
    assert sizes.min() >= MIN_COUNT and sizes.sum() == 301 and released["suppressed_rows"] == 0
    assert released["positives"][-1] == 1, "the lone positive sits in the top bin, merged with its neighbours"
    # the positive now ties with the negatives of its bin, and only with them
    tied = released["negatives"][-1]
    assert evaluate(scores, labels)["auc"] == 1.0
    assert metrics_from_histograms([released])["auc"] == pytest.approx(1.0 - 0.5 * tied / 300)
