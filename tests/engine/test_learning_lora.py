"""The pretrained encoder and its federated LoRA fine-tuning: all-MiniLM-L6-v2 read from the
pinned wheel with the network cut off, a tampered copy refused, and a federated round through
real silo agents in which only the adapters and the head cross, and which learns."""

from __future__ import annotations

import socket

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from fedlake.agent import local_agent_client
from fedlake.learning import weights as wire
from fedlake.learning.agent_actions import TRAIN_ACTION, register_learning_actions
from fedlake.learning.aggregate import FedAvg
from fedlake.learning.coordinator import FederatedTrainer
from fedlake.learning.encoder import WEIGHTS_FILE, EncoderError, read_encoder, unpacked
from fedlake.learning.lora import full_model_parameters
from fedlake.learning.memo_text import MemoTextData
from fedlake.learning.metrics import evaluate
from fedlake.learning.models import aml_spec
from fedlake.learning.silo_examples import silo_examples
from fedlake.learning.train import TrainConfig, predict
from fedlake.policy.model import load_policy
from fedlake.silos import open_silo
from fedlake.synth.default_model import REGION_COUNTRIES
from tests.conftest import REPO

SPEC = aml_spec("aml_model", "minilm-lora", {"max_tokens": 32})
CONFIG = TrainConfig(epochs=1, lr=3e-3, batch_size=16, max_samples=48, device="cpu")
TRAVELLING = ("text.", "numeric.", "head.")


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a network connection fails the test (local Unix sockets only)."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        if self.family != socket.AF_UNIX:
            attempts.append(address)
            raise OSError(f"network access attempted: {address}")
        return real_connect(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        attempts.append(host)
        raise OSError(f"name resolution attempted: {host}")

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    return attempts


def test_encoder_loads_offline_from_the_wheel_and_refuses_a_tampered_copy(tmp_path, no_network):
    folder = unpacked(tmp_path)
    assert folder.parent == tmp_path and (folder / WEIGHTS_FILE).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging folder is left behind"
    assert unpacked(tmp_path) == folder, "a second use reuses the unpacked folder"
    encoder = read_encoder(folder)
    batch = encoder.tokenizer(["consulting fee inv 0000", "salary march"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder.model(**batch).last_hidden_state
    assert hidden.shape[0] == 2 and hidden.shape[-1] == encoder.hidden_size == 384
    assert no_network == [], f"loading the encoder tried the network: {no_network}"

    with open(folder / WEIGHTS_FILE, "r+b") as f:
        f.seek(-16, 2)
        f.write(b"\xff" * 16)
    with pytest.raises(EncoderError, match="is not the pinned all-MiniLM-L6-v2") as refused:
        read_encoder(folder)
    assert "\n" not in str(refused.value)


@pytest.fixture(scope="module")
def clients(local_deployment):
    policy = load_policy(REPO / "policies.yaml", local_deployment.catalog)
    made = {}
    for silo in local_deployment.catalog.silos:
        client = local_agent_client(local_deployment.catalog, policy, silo, local_deployment.home)
        register_learning_actions(client.agent)
        made[silo] = client
    return made


def truth_sample(deployment, negatives: int = 200) -> tuple[MemoTextData, np.ndarray]:
    """Every planted laundering account and a fixed draw of the others, scored as the bank's
    evaluator with direct access to the silos."""
    truth = set(pq.read_table(deployment.home / "truth" / "aml_pattern_accounts.parquet").column("account_id").to_pylist())
    parts = []
    for name, spec in deployment.catalog.silos.items():
        with open_silo(spec, "local", deployment.home) as connector:
            parts.append(silo_examples(connector, SPEC, tuple(REGION_COUNTRIES.get(spec.region, ()))))
    everyone = MemoTextData.concat(parts)
    labels = np.array([a in truth for a in everyone.account_ids], dtype=float)
    rng = np.random.default_rng(0)
    keep = labels == 1
    keep[rng.choice(np.flatnonzero(labels == 0), negatives, replace=False)] = True
    return everyone.subset(keep), labels[keep]


def test_a_lora_round_moves_only_adapters_and_head(local_deployment, clients):
    model = SPEC.build(seed=0)
    start = wire.model_weights(model)
    answer = clients["eu_core"].action(TRAIN_ACTION, spec=SPEC.to_dict(), weights=wire.encode(start),
                                       config=CONFIG.to_dict(), round=1)
    sent = wire.decode(answer["weights"])
    assert set(sent) == set(start)
    assert all("lora_A" in k or "lora_B" in k or k.startswith(TRAVELLING) for k in sent), sorted(sent)
    adapters = [k for k in sent if "lora_" in k]
    assert len(adapters) == 6 * 2 * 2, "A and B of query and value in each of the six layers"
    assert not [k for k in sent if "embeddings" in k or k.endswith((".query.base_layer.weight", "dense.weight"))]
    assert sum(v.size for v in sent.values()) == model.travelling_parameters()
    full_bytes = 4 * full_model_parameters(model)
    assert len(answer["weights"]) < full_bytes / 100, "adapters and head are under 1 % of the full model's bytes"
    assert answer["n_samples"] == CONFIG.max_samples
    assert any(not np.array_equal(sent[k], start[k]) for k in adapters), "the adapters trained"


def test_federated_lora_fine_tuning_improves_on_the_untrained_start(local_deployment, clients, tmp_path):
    data, labels = truth_sample(local_deployment)
    before = evaluate(predict(SPEC.build(seed=0), data, threads=2), labels)
    result = FederatedTrainer(clients, SPEC, FedAvg(), rounds=2, min_silos=3, round_timeout_s=300,
                              checkpoint_dir=tmp_path / "ckpt", config=CONFIG).fit()
    after = evaluate(predict(wire.load_into(SPEC.build(), result.weights), data, threads=2), labels)
    assert after["auc"] > before["auc"] + 0.1, (before, after)
    assert after["pr_auc"] > before["pr_auc"], (before, after)
    assert all(r["participants"] == sorted(clients) for r in result.history)
