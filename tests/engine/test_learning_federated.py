"""Federated AML training through real silo agents: what crosses (only weights, ledgered and
counted; for evaluation of a registered version, a histogram of bins of at least min_count
accounts), what happens when an agent dies or is late mid-training, the resume from the
checkpoint, and differential privacy."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from fedlake.agent import AgentClient, FlightAgentClient, client_token, ledger_for, local_agent_client
from fedlake.agent.server import AgentFlightServer
from fedlake.learning import weights as wire
from fedlake.learning.agent_actions import register_learning_actions
from fedlake.learning.aggregate import FedAvg, FedProx
from fedlake.learning.coordinator import CheckpointMismatch, FederatedTrainer, QuorumError
from fedlake.learning.data import AML_FEATURES, aml_examples
from fedlake.learning.metrics import evaluate
from fedlake.learning.models import AML_DEFAULTS, ModelSpec
from fedlake.learning.registry import ModelRegistry
from fedlake.learning.train import DPConfig, TrainConfig, predict
from fedlake.policy.model import load_policy
from fedlake.silos import open_silo
from fedlake.synth.default_model import REGION_COUNTRIES
from tests.conftest import REPO

SILOS = ("eu_core", "us_lake", "sg_lake")
SPEC = ModelSpec("aml_model", "aml", {"buckets": 2**12})
CONFIG = TrainConfig(epochs=2, lr=0.01, batch_size=128, device="cpu")


class Recording(AgentClient):
    """A real client that keeps every answer as the JSON that crossed, to scan it afterwards."""

    def __init__(self, inner: AgentClient):
        self.inner = inner
        self.silo = inner.silo
        self.answers: list[tuple[str, str]] = []

    def prepare(self, request):
        return self.inner.prepare(request)

    def attach_keys(self, ticket, column, keys, condition=""):
        return self.inner.attach_keys(ticket, column, keys, condition)

    def fetch(self, ticket):
        return self.inner.fetch(ticket)

    def residual(self, request):
        return self.inner.residual(request)

    def action(self, name: str, **body: Any) -> Any:
        result = self.inner.action(name, **body)
        self.answers.append((name, json.dumps(result)))
        return result


@pytest.fixture(scope="module")
def policy(local_deployment):
    return load_policy(REPO / "policies.yaml", local_deployment.catalog)


def learning_client(deployment, policy, silo, **options):
    client = local_agent_client(deployment.catalog, policy, silo, deployment.home)
    register_learning_actions(client.agent, **options)
    return client


def last_seq(deployment) -> int:
    entries = ledger_for(deployment.home).entries()
    return entries[-1]["seq"] if entries else 0


def silo_secrets(deployment, silo) -> tuple[list[str], list[str]]:
    """What must never leave the silo: its memos and its account ids (read here as the bank's
    evaluator, directly from the silo)."""
    with open_silo(deployment.catalog.silo(silo), "local", deployment.home) as connector:
        memos = connector.execute("SELECT DISTINCT memo FROM transactions WHERE memo IS NOT NULL").read_all().column(0).to_pylist()
        accounts = connector.execute("SELECT account_id FROM accounts").read_all().column(0).to_pylist()
    return [m for m in memos if len(m) >= 6], accounts


def full_truth_auc(deployment, weights) -> float:
    """AUC of a model against every planted laundering account, over every account of every silo."""
    truth = set(pq.read_table(deployment.home / "truth" / "aml_pattern_accounts.parquet").column("account_id").to_pylist())
    model = wire.load_into(SPEC.build(), weights)
    scores, labels = [], []
    for silo in SILOS:
        spec = deployment.catalog.silo(silo)
        with open_silo(spec, "local", deployment.home) as connector:
            data = aml_examples(connector, SPEC.params["buckets"], tuple(REGION_COUNTRIES[spec.region]))
        scores.append(predict(model, data, device="cpu"))
        labels.append(np.array([a in truth for a in data.account_ids], dtype=float))
    return evaluate(np.concatenate(scores), np.concatenate(labels))["auc"]


def test_aml_examples_are_one_per_account_labelled_by_the_silos_own_cases(local_deployment):
    assert AML_DEFAULTS["n_numeric"] == len(AML_FEATURES)
    for silo in SILOS:
        spec = local_deployment.catalog.silo(silo)
        with open_silo(spec, "local", local_deployment.home) as connector:
            data = aml_examples(connector, 2**10, tuple(REGION_COUNTRIES[spec.region]))
            cases = set(connector.execute("SELECT account_id FROM aml_cases").read_all().column(0).to_pylist())
        assert len(data) == local_deployment.report.rows[silo]["accounts"]
        assert set(data.account_ids[data.labels == 1]) == cases
        assert np.isfinite(data.numeric).all() and data.numeric.shape == (len(data), len(AML_FEATURES))
        assert data.ids.min() >= 0 and data.ids.max() < 2**10 and np.all(np.diff(data.offsets) > 0)


def test_federated_training_moves_only_weights_through_the_agents(local_deployment, policy, tmp_path):
    deployment = local_deployment
    registry = ModelRegistry(tmp_path / "models")
    clients = {silo: Recording(learning_client(deployment, policy, silo, registry=registry.root)) for silo in SILOS}
    before_seq = last_seq(deployment)
    before = {silo: c.inner.agent.egress.snapshot() for silo, c in clients.items()}

    trainer = FederatedTrainer(clients, SPEC, FedProx(mu=0.01), rounds=3, min_silos=3, round_timeout_s=120,
                               checkpoint_dir=tmp_path / "ckpt", config=CONFIG, secure_aggregation=None)
    result = trainer.fit()

    assert [r["round"] for r in result.history] == [1, 2, 3]
    for record in result.history:
        assert record["participants"] == sorted(SILOS) and record["left_out"] == {}
        assert all(record["samples"][silo] > 0 for silo in SILOS)
    assert result.epsilon == {silo: None for silo in SILOS}
    assert set(result.fingerprints) == set(SILOS)

    # the ledger: one train_round entry per silo and round, rows 0, bytes = what was answered
    entries = [e for e in ledger_for(deployment.home).entries() if e["seq"] > before_seq]
    assert len(entries) == 3 * len(SILOS)
    assert {e["operation"] for e in entries} == {"train_round"}
    assert {e["decision"] for e in entries} == {"allowed"} and {e["rows"] for e in entries} == {0}
    assert {e["purpose"] for e in entries} == {"aml"}
    for entry in entries:
        [column] = json.loads(entry["columns"])
        assert column["output"] == "model_weights" and column["rules"] == ["training: only weights leave"]
    for silo, client in clients.items():
        sent = [len(payload) for name, payload in client.answers if name == "train_round"]
        assert sorted(e["bytes"] for e in entries if e["silo"] == silo) == sorted(sent)
        # the agent's egress counter: no row, and exactly the bytes of the answers
        rows, nbytes = client.inner.agent.egress.snapshot()
        assert rows == before[silo][0]
        assert nbytes - before[silo][1] == sum(sent)

    # what crossed holds weights and aggregates: no memo, no account id of any silo
    answers = [json.loads(payload) for c in clients.values() for _, payload in c.answers]
    assert all(set(a) == {"weights", "n_samples", "metrics", "epsilon"} for a in answers)
    everything = "\n".join(payload for c in clients.values() for _, payload in c.answers)
    for silo in SILOS:
        memos, accounts = silo_secrets(deployment, silo)
        assert memos and accounts
        assert not [m for m in memos if m in everything], f"a memo of {silo} crossed"
        assert not [a for a in accounts if a in everything], f"an account id of {silo} crossed"

    # the model found the laundering (evaluated against the full truth by the bank's evaluator)
    assert full_truth_auc(deployment, result.weights) > 0.9

    # the version is registered first: the silos evaluate registered versions only, by hash
    version = registry.register(
        "aml_model", SPEC, result.weights, fingerprints=result.fingerprints, epsilon=result.epsilon, hyper_parameters=CONFIG.to_dict(),
        policy_decisions=[{"operation": e["operation"], "silo": e["silo"], "decision": e["decision"], "rows": e["rows"]} for e in entries],
    )

    # federated evaluation: metrics per silo and pooled from released histograms, ledgered as such
    seq = last_seq(deployment)
    evaluation = trainer.evaluate(version)
    assert evaluation["model"] == version.sha256
    assert set(evaluation["per_silo"]) == set(SILOS) and evaluation["left_out"] == {}
    assert evaluation["pooled"]["n"] == sum(m["n"] for m in evaluation["per_silo"].values())
    assessed = [e for e in ledger_for(deployment.home).entries() if e["seq"] > seq]
    assert {(e["operation"], e["rows"]) for e in assessed} == {("evaluate_round", 0)} and len(assessed) == 3

    # the version that the registry keeps: pooled and per-region held-out metrics, fingerprints
    version = registry.record_evaluation("aml_model", version.version, evaluation["pooled"], per_region=evaluation["per_silo"])
    card = version.card()
    assert all(f"| {silo} |" in card for silo in SILOS) and result.fingerprints["sg_lake"] in card
    assert (version.path / "roc.png").exists()


def serve(agent) -> AgentFlightServer:
    return AgentFlightServer(agent, "grpc+tcp://127.0.0.1:0")


def test_a_killed_agent_is_left_out_below_quorum_the_round_fails_and_training_resumes(local_deployment, policy, tmp_path):
    deployment = local_deployment
    token = client_token(policy, "coordinator", "local", deployment.home)
    servers = {silo: serve(learning_client(deployment, policy, silo).agent) for silo in ("us_lake", "sg_lake")}

    def clients() -> dict[str, AgentClient]:
        remote = {silo: FlightAgentClient(silo, f"grpc+tcp://127.0.0.1:{s.port}", token, timeout=60) for silo, s in servers.items()}
        return {"eu_core": learning_client(deployment, policy, "eu_core"), **remote}

    kills = {1: "sg_lake", 2: "us_lake"}  # after round 1 the SG agent dies, after round 2 the US one

    def kill(round_, weights, record):
        if round_ in kills:
            servers[kills[round_]].shutdown()

    checkpoint = tmp_path / "ckpt"
    first = FederatedTrainer(clients(), SPEC, FedAvg(), rounds=4, min_silos=2, round_timeout_s=60,
                             checkpoint_dir=checkpoint, config=CONFIG, on_round=kill)
    with pytest.raises(QuorumError) as failure:
        first.fit()
    message = str(failure.value)
    assert "round 3: 1 of 3 silos answered, fewer than min_silos=2" in message
    assert "us_lake: failed" in message and "sg_lake: failed" in message and "resumes" in message
    assert set(failure.value.left_out) == {"us_lake", "sg_lake"}

    state = json.loads((checkpoint / "state.json").read_text())
    assert state["round"] == 2
    round1, round2 = state["history"]
    assert round1["participants"] == sorted(SILOS)
    assert round2["participants"] == ["eu_core", "us_lake"] and set(round2["left_out"]) == {"sg_lake"}
    checkpointed = wire.load(checkpoint / state["weights_file"])

    # the agents come back; a new trainer on the same folder resumes after round 2
    servers.update({silo: serve(learning_client(deployment, policy, silo).agent) for silo in ("us_lake", "sg_lake")})
    resumed_rounds = []
    second = FederatedTrainer(clients(), SPEC, FedAvg(), rounds=4, min_silos=2, round_timeout_s=60,
                              checkpoint_dir=checkpoint, config=CONFIG, on_round=lambda r, w, rec: resumed_rounds.append(r))
    result = second.fit()
    assert result.resumed_from == 2 and resumed_rounds == [3, 4]
    assert [r["round"] for r in result.history] == [1, 2, 3, 4]
    assert result.history[1]["left_out"].keys() == {"sg_lake"}  # the record of what happened stays
    assert all(r["participants"] == sorted(SILOS) for r in result.history[2:])
    assert any(not np.array_equal(result.weights[k], checkpointed[k]) for k in checkpointed)
    for server in servers.values():
        server.shutdown()

    # a finished training resumes to itself; another spec on the same folder is refused
    assert FederatedTrainer(clients(), SPEC, FedAvg(), 4, 2, 60, checkpoint, CONFIG).fit().resumed_from == 4
    with pytest.raises(CheckpointMismatch, match="another training"):
        FederatedTrainer(clients(), ModelSpec("aml_model", "aml", {"buckets": 2**10}), FedAvg(), 4, 2, 60, checkpoint, CONFIG).fit()


def test_a_late_silo_is_left_out_of_the_round(local_deployment, policy, tmp_path):
    clients = {silo: learning_client(local_deployment, policy, silo) for silo in SILOS}
    slow_agent = clients["sg_lake"].agent
    real = slow_agent._actions["train_round"]
    released = threading.Event()

    def late(caller, body):
        released.wait(30)
        return real(caller, body)

    slow_agent.register_action("train_round", late)
    started = time.perf_counter()
    result = FederatedTrainer(clients, SPEC, FedAvg(), rounds=1, min_silos=2, round_timeout_s=8,
                              checkpoint_dir=tmp_path / "ckpt", config=CONFIG).fit()
    released.set()
    assert time.perf_counter() - started < 25
    [record] = result.history
    assert record["participants"] == ["eu_core", "us_lake"]
    assert record["left_out"] == {"sg_lake": "no answer within the round timeout of 8s"}


def test_dp_sgd_reports_a_finite_growing_epsilon_and_the_silo_can_insist_on_it(local_deployment, policy, tmp_path):
    dp_spec = ModelSpec("aml_dp", "aml", {"buckets": 2**10, "text_dim": 8})
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    clients = {silo: learning_client(local_deployment, policy, silo) for silo in SILOS}
    result = FederatedTrainer(clients, dp_spec, FedAvg(), rounds=2, min_silos=3, round_timeout_s=300,
                              checkpoint_dir=tmp_path / "dp", config=TrainConfig(epochs=1, lr=0.01, batch_size=64, dp=dp, device="cpu")).fit()
    for silo in SILOS:
        first, second = (r["epsilon"][silo] for r in result.history)
        assert 0 < first < second < float("inf")
        assert result.epsilon[silo] == pytest.approx(second)
        assert result.delta[silo] == 1e-5
        # under DP only the weights leave: no loss or held-out metric computed without noise
        assert all("held_out" not in r["metrics"][silo] and "train_loss" not in r["metrics"][silo] for r in result.history)

    # the SG silo requires DP: a round asked without it is refused, never silently changed...
    required = DPConfig(noise_multiplier=2.0)
    clients["sg_lake"] = learning_client(local_deployment, policy, "sg_lake", dp_required=required)
    plain = TrainConfig(epochs=1, batch_size=64, device="cpu")
    with pytest.raises(QuorumError, match=r"sg_lake.*requires DP-SGD with noise_multiplier >= 2.*asked for no DP: refused"):
        FederatedTrainer(clients, dp_spec, FedAvg(), rounds=1, min_silos=3, round_timeout_s=300,
                         checkpoint_dir=tmp_path / "refused", config=plain).fit()
    # ...and the coordinator asks each silo for what it requires: DP-FedAvg over mixed silos
    result = FederatedTrainer(clients, dp_spec, FedAvg(), rounds=1, min_silos=3, round_timeout_s=300,
                              checkpoint_dir=tmp_path / "mixed", config=plain, dp_by_silo={"sg_lake": required}).fit()
    assert result.epsilon["eu_core"] is None and result.epsilon["us_lake"] is None
    assert 0 < result.epsilon["sg_lake"] < float("inf")
    assert result.history[0]["metrics"]["sg_lake"]["dp"]["required_by"] == "the agent's dp_required"


def test_the_agent_refuses_what_it_should_not_train(local_deployment, policy):
    client = learning_client(local_deployment, policy, "us_lake")
    weights = wire.encode(wire.model_weights(SPEC.build(seed=0)))
    with pytest.raises(Exception, match="only AML models train on a silo's own rows"):
        client.action("train_round", spec={"name": "c", "kind": "credit"}, weights=weights, config={})
    with pytest.raises(Exception, match="were they made for another model spec"):
        client.action("train_round", spec=ModelSpec("aml_model", "aml", {"buckets": 64}).to_dict(), weights=weights, config={})
    with pytest.raises(Exception, match="may not declare purpose 'marketing'"):
        client.action("train_round", spec=SPEC.to_dict(), weights=weights, config={}, purpose="marketing")
