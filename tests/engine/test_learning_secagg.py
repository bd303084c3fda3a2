"""Federated training through real agents under secure aggregation: the model is the one plain
FedAvg gives, what crosses holds masked vectors instead of weights and sample counts (each stage
ledgered), and a silo lost mid-round is recovered from the others' shares."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedlake.agent import FlightAgentClient, client_token, ledger_for, local_agent_client
from fedlake.agent.server import AgentFlightServer
from fedlake.learning.agent_actions import TRAIN_ACTION, register_learning_actions
from fedlake.learning.aggregate import FedAvg
from fedlake.learning.coordinator import FederatedTrainer
from fedlake.learning.models import ModelSpec
from fedlake.learning.secagg.messages import ADVERTISE_ACTION, SHARE_KEYS_ACTION, UNMASK_ACTION
from fedlake.learning.train import TrainConfig
from fedlake.policy.model import load_policy
from tests.conftest import REPO
from tests.engine.test_learning_federated import Recording, last_seq

SILOS = ("eu_core", "us_lake", "sg_lake")
SPEC = ModelSpec("aml_secagg", "aml", {"buckets": 2**10, "text_dim": 8, "hidden": 16})
CONFIG = TrainConfig(epochs=1, lr=0.01, batch_size=128, device="cpu")
ROUNDS = 1


@pytest.fixture(scope="module")
def policy(local_deployment):
    return load_policy(REPO / "policies.yaml", local_deployment.catalog)


@pytest.fixture(scope="module")
def agents(local_deployment, policy):
    """One in-process agent per silo, whose adverts are checked against the deployment's keys."""
    clients = {}
    for silo in SILOS:
        client = local_agent_client(local_deployment.catalog, policy, silo, local_deployment.home)
        register_learning_actions(client.agent, peer_keys=local_deployment.home)
        clients[silo] = client
    return clients


def train(clients, tmp_path, name, secure=True, rounds=ROUNDS, min_silos=2):
    options = {} if secure else {"secure_aggregation": None}
    return FederatedTrainer(clients, SPEC, FedAvg(), rounds=rounds, min_silos=min_silos, round_timeout_s=120,
                            checkpoint_dir=tmp_path / name, config=CONFIG, **options).fit()


def assert_same_model(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=atol, err_msg=key)


def test_masked_training_over_flight_gives_the_plain_model_and_only_masked_vectors_cross(local_deployment, policy, agents, tmp_path):
    server = AgentFlightServer(agents["sg_lake"].agent, "grpc+tcp://127.0.0.1:0")
    try:
        remote = FlightAgentClient("sg_lake", f"grpc+tcp://127.0.0.1:{server.port}",
                                   client_token(policy, "coordinator", "local", local_deployment.home), timeout=60)
        clients = {silo: Recording(remote if silo == "sg_lake" else agents[silo]) for silo in SILOS}
        seq = last_seq(local_deployment)
        secure = train(clients, tmp_path, "secure")
        entries = [e for e in ledger_for(local_deployment.home).entries() if e["seq"] > seq]
    finally:
        server.shutdown()
    plain = train({silo: agents[silo] for silo in SILOS}, tmp_path, "plain", secure=False)
    assert_same_model(secure.weights, plain.weights)

    for record, reference in zip(secure.history, plain.history):
        cost = record["secure_aggregation"]
        assert record["participants"] == sorted(SILOS) and record["left_out"] == {} and record["samples"] == {}
        assert record["samples_total"] == sum(reference["samples"].values())
        assert cost["adverts_checked"] == {silo: True for silo in SILOS}, "each agent checked its peers' signed adverts"
        assert cost["bytes_in"] > 0 and cost["bytes_out"] > 0 and set(cost["seconds"]) >= {"advertise keys", "unmask", "reconstruct"}
    # what each agent answered: keys, sealed shares, a masked vector, shares for the unmasking; all ledgered
    stages = (ADVERTISE_ACTION, SHARE_KEYS_ACTION, TRAIN_ACTION, UNMASK_ACTION)
    for client in clients.values():
        trained = [json.loads(payload) for name, payload in client.answers if name == TRAIN_ACTION]
        assert trained and all(set(a) == {"masked", "metrics", "epsilon"} for a in trained)
        assert [name for name, _ in client.answers] == list(stages) * ROUNDS
    assert sorted((e["silo"], e["operation"]) for e in entries) == sorted([(s, op) for s in SILOS for op in stages] * ROUNDS)
    assert {json.loads(e["columns"])[0]["output"] for e in entries if e["operation"] == TRAIN_ACTION} == {"masked_update"}


class FailingAt:
    """A real agent client whose silo goes away at one action (and stays away for the round)."""

    def __init__(self, inner, action: str):
        self.inner, self.silo, self.failing = inner, inner.silo, action
        self.gone = False

    def action(self, name, **body):
        if name == self.failing or self.gone:
            self.gone = True
            raise ConnectionError(f"{self.silo} lost its link")
        return self.inner.action(name, **body)


@pytest.mark.parametrize("stage, in_sum", [(TRAIN_ACTION, ("eu_core", "us_lake")), (UNMASK_ACTION, SILOS)])
def test_a_silo_lost_after_sharing_or_after_masking_is_recovered(agents, tmp_path, stage, in_sum):
    clients = {silo: FailingAt(agents[silo], stage) if silo == "sg_lake" else agents[silo] for silo in SILOS}
    result = train(clients, tmp_path, "lost", rounds=1)
    [record] = result.history
    assert "sg_lake lost its link" in record["left_out"]["sg_lake"]
    assert record["secure_aggregation"]["dropped_at"] == {"sg_lake": "masked input" if stage == TRAIN_ACTION else "unmask"}
    assert record["participants"] == sorted(in_sum)
    plain = train({silo: agents[silo] for silo in in_sum}, tmp_path, "reference", secure=False, rounds=1)
    assert_same_model(result.weights, plain.weights)
