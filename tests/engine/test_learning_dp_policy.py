"""Per-silo DP requirements declared in policies.yaml: parsed in one line, enforced by the silo's
agent, and accounted per silo by the coordinator."""

from __future__ import annotations

import pytest
import yaml

from fedlake.agent import local_agent_client
from fedlake.errors import ConfigError
from fedlake.learning import weights as wire
from fedlake.learning.agent_actions import TRAIN_ACTION, register_learning_actions
from fedlake.learning.aggregate import FedAvg
from fedlake.learning.coordinator import FederatedTrainer
from fedlake.learning.models import ModelSpec
from fedlake.learning.silo_dp import DP_LEVEL, dp_accounting, required_dp
from fedlake.learning.train import DPConfig, TrainConfig
from fedlake.policy.model import parse_policy
from tests.conftest import REPO

SILOS = ("eu_core", "us_lake", "sg_lake")
SPEC = ModelSpec("aml_dp", "aml", {"buckets": 2**10, "text_dim": 8})
PLAIN = TrainConfig(epochs=1, lr=0.01, batch_size=64, device="cpu")


def policy_with(catalog, training):
    raw = yaml.safe_load((REPO / "policies.yaml").read_text())
    return parse_policy({**raw, "training": training}, catalog, "policies.yaml")


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"nowhere": {"dp": {"noise_multiplier": 1.0}}}, r"^policies.yaml: training.nowhere: unknown silo \(known: "),
        ({"sg_lake": {"dp": {"max_epsilon": 3.0}}}, r"^policies.yaml: training.sg_lake.dp.noise_multiplier: required"),
        ({"sg_lake": {"dp": {"noise_multiplier": 0}}}, r"^policies.yaml: training.sg_lake.dp.noise_multiplier: expected a number > 0, got 0$"),
        ({"sg_lake": {"dp": {"noise_multiplier": 1.0, "delta": 1.5}}}, r"^policies.yaml: training.sg_lake.dp.delta: expected a number in \(0, 1\)"),
        ({"sg_lake": {"dp": {"noise_multiplier": "lots"}}}, r"^policies.yaml: training.sg_lake.dp.noise_multiplier: expected a number > 0, got 'lots'$"),
        ({"sg_lake": {"dp": {"noise_multiplier": 1.0, "epsilon": 3}}}, r"^policies.yaml: training.sg_lake.dp.epsilon: unknown key \(allowed: "),
        ({"sg_lake": {"privacy": True}}, r"^policies.yaml: training.sg_lake.privacy: unknown key \(allowed: dp\)$"),
        ({"sg_lake": "dp"}, r"^policies.yaml: training.sg_lake: expected a mapping"),
        (["sg_lake"], r"^policies.yaml: training: expected a mapping"),
    ],
)
def test_a_malformed_dp_declaration_is_one_line_naming_the_key(catalog, training, message):
    with pytest.raises(ConfigError, match=message) as caught:
        policy_with(catalog, training)
    assert "\n" not in str(caught.value)


def test_the_repository_policy_parses_and_declares_what_it_declares(catalog):
    policy = policy_with(catalog, {"sg_lake": {"dp": {"noise_multiplier": 1.3, "max_epsilon": 3.0}}})
    requirement = policy.training.dp_for("sg_lake")
    assert (requirement.noise_multiplier, requirement.max_grad_norm, requirement.delta, requirement.max_epsilon) == (1.3, 1.0, 1e-5, 3.0)
    assert policy.training.dp_for("eu_core") is None
    assert required_dp(policy, SILOS) == {"sg_lake": DPConfig(1.3, 1.0, 1e-5)}
    stronger = DPConfig(2.0, 0.5, 1e-6)
    assert required_dp(policy, SILOS, asked=stronger) == {"sg_lake": stronger}, "what the training asks, where it meets the policy"


def client(deployment, policy, silo):
    agent_client = local_agent_client(deployment.catalog, policy, silo, deployment.home)
    register_learning_actions(agent_client.agent)
    return agent_client


def test_a_silo_whose_policy_requires_dp_refuses_anything_weaker(local_deployment, catalog):
    policy = policy_with(catalog, {"sg_lake": {"dp": {"noise_multiplier": 1.5, "max_grad_norm": 1.0}}})
    sg = client(local_deployment, policy, "sg_lake")
    weights = wire.encode(wire.model_weights(SPEC.build(seed=0)))

    def train(dp: DPConfig | None):
        config = TrainConfig(**{**PLAIN.to_dict(), "dp": dp}).to_dict()
        return sg.action(TRAIN_ACTION, spec=SPEC.to_dict(), weights=weights, config=config, round=1)

    for weaker, asked in [(None, "no DP"), (DPConfig(1.0), "noise_multiplier 1,"), (DPConfig(1.5, max_grad_norm=5.0), "max_grad_norm 5,")]:
        with pytest.raises(Exception, match=r"policies.yaml: training.sg_lake.dp requires DP-SGD with noise_multiplier >= 1.5") as caught:
            train(weaker)
        assert asked in str(caught.value) and "\n" not in str(caught.value)
    answer = train(DPConfig(1.5))
    assert answer["metrics"]["dp"]["required_by"] == "policies.yaml: training.sg_lake.dp"
    assert 0 < answer["epsilon"] <= answer["metrics"]["dp"]["silo_epsilon"] < float("inf")

    # a silo with a budget refuses the round that would overspend it, before it trains
    thrifty = client(local_deployment, policy_with(catalog, {"sg_lake": {"dp": {"noise_multiplier": 1.5, "max_epsilon": 0.05}}}), "sg_lake")
    with pytest.raises(Exception, match=r"training.sg_lake.dp allows epsilon 0.05; this round would bring the silo's training to \d"):
        thrifty.action(TRAIN_ACTION, spec=SPEC.to_dict(), weights=weights,
                       config=TrainConfig(**{**PLAIN.to_dict(), "dp": DPConfig(1.5)}).to_dict(), round=1)


def test_dp_fedavg_reports_the_accounting_of_each_silo(local_deployment, catalog, tmp_path):
    policy = policy_with(catalog, {"sg_lake": {"dp": {"noise_multiplier": 1.2, "delta": 1e-6}}})
    clients = {silo: client(local_deployment, policy, silo) for silo in SILOS}
    result = FederatedTrainer(clients, SPEC, FedAvg(), rounds=2, min_silos=3, round_timeout_s=300, checkpoint_dir=tmp_path / "ckpt",
                              config=PLAIN, dp_by_silo=required_dp(policy, SILOS), secure_aggregation=None).fit()
    accounts = dp_accounting(result.history, SILOS)
    sg = accounts["sg_lake"]
    assert sg.epsilon == pytest.approx(result.epsilon["sg_lake"]) and 0 < sg.epsilon < float("inf")
    assert (sg.delta, sg.noise_multiplier, sg.max_grad_norm, sg.rounds) == (1e-6, 1.2, 1.0, 2)
    assert sg.required_by == "policies.yaml: training.sg_lake.dp" and sg.level == DP_LEVEL
    assert 0 < sg.sample_rate < 1 and sg.steps > 0 and sg.silo_epsilon == pytest.approx(sg.epsilon)
    for silo in ("eu_core", "us_lake"):
        assert accounts[silo].epsilon is None and accounts[silo].rounds == 2 and result.epsilon[silo] is None
