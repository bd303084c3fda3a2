"""Several specialised models trained at once through the same agents: two shared AML models
under secure aggregation (each round its own session in every agent it spans) and a model
specialised to one region's silo. Trained side by side they come out as they do one after the other."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fedlake.agent import local_agent_client
from fedlake.learning.agent_actions import register_learning_actions
from fedlake.learning.aggregate import FedAvg, FedProx
from fedlake.learning.coordinator import FederatedTrainer
from fedlake.learning.models import ModelSpec
from fedlake.learning.train import TrainConfig
from fedlake.policy.model import load_policy
from tests.conftest import REPO

SILOS = ("eu_core", "us_lake", "sg_lake")
CONFIG = TrainConfig(epochs=1, lr=0.01, batch_size=128, device="cpu")
ROUNDS = 1
JOBS = {  # name -> (spec, strategy, silos)
    "aml_shared": (ModelSpec("aml_shared", "aml", {"buckets": 2**10, "text_dim": 8, "hidden": 16}), FedAvg(), SILOS),
    "aml_shared_prox": (ModelSpec("aml_shared_prox", "aml", {"buckets": 2**10, "text_dim": 4, "hidden": 8}), FedProx(mu=0.05), SILOS[:2]),
    "memo_screen_sg": (ModelSpec("memo_screen_sg", "aml", {"buckets": 2**9, "text_dim": 4, "hidden": 8}), FedAvg(), ("sg_lake",)),
}


@pytest.fixture(scope="module")
def agents(local_deployment):
    policy = load_policy(REPO / "policies.yaml", local_deployment.catalog)
    clients = {}
    for silo in SILOS:
        clients[silo] = local_agent_client(local_deployment.catalog, policy, silo, local_deployment.home)
        register_learning_actions(clients[silo].agent, peer_keys=local_deployment.home)
    return clients


def fit(agents, folder, name):
    spec, strategy, silos = JOBS[name]
    trainer = FederatedTrainer({s: agents[s] for s in silos}, spec, strategy, rounds=ROUNDS, min_silos=len(silos),
                               round_timeout_s=120, checkpoint_dir=folder / name, config=CONFIG)
    return trainer.fit()


def test_concurrent_trainings_do_not_interfere(agents, tmp_path):
    one_by_one = {name: fit(agents, tmp_path / "sequential", name) for name in JOBS}
    with ThreadPoolExecutor(max_workers=len(JOBS)) as pool:
        futures = {name: pool.submit(fit, agents, tmp_path / "concurrent", name) for name in JOBS}
        side_by_side = {name: future.result() for name, future in futures.items()}
    for name in JOBS:
        a, b = one_by_one[name].weights, side_by_side[name].weights
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=f"{name}: {key}")
        secure = [r.get("secure_aggregation") is not None for r in side_by_side[name].history]
        assert secure == [len(JOBS[name][2]) > 1] * ROUNDS
