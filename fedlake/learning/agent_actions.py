"""The training actions a silo agent serves: a local round, and an evaluation of a given model.

Both build the silo's AML examples in place, from its own tables, inside the agent's process; the
memos and the rows never leave it. What leaves is, for train_round, the new weights, the number of
training accounts, aggregate metrics and the spent epsilon; for evaluate_round, aggregate metrics
and a score histogram (counts per score bin, no account named). Each answer is ledgered like a
query's egress (operation, decision, bytes; rows 0) and counted in the agent's egress counter.

Evaluation against the bank's full ground truth is not an agent action: sending the truth's
account ids in and per-account scores out would move per-account data across the boundary. The
agent evaluates against the labels its silo holds (aml_cases) on a held-out fifth of its accounts;
the full-truth evaluation is the benchmark's and the tests', acting as the bank's evaluator with
direct access to each silo.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from typing import Any

from fedlake.agent.agent import Caller, SiloAgent
from fedlake.errors import FedlakeError
from fedlake.learning import weights as wire
from fedlake.learning.data import AMLData, aml_examples, data_fingerprint, held_out_mask
from fedlake.learning.metrics import evaluate, score_histogram, summary
from fedlake.learning.models import ModelSpec
from fedlake.learning.train import DPConfig, TrainConfig, predict, train_local

TRAIN_ACTION = "train_round"
EVALUATE_ACTION = "evaluate_round"
DEFAULT_PURPOSE = "aml"
TRAIN_RULE = "training: only weights leave"
EVALUATE_RULE = "evaluation: only aggregate metrics leave"


class TrainingRefused(FedlakeError):
    """The silo will not train or evaluate as asked (wrong model kind, unreadable weights...)."""


@dataclass
class _Split:
    all: AMLData
    train: AMLData
    held_out: AMLData


class _Examples:
    """The silo's AML examples and their fixed train/held-out split, rebuilt only when the data
    changed (by fingerprint), so that rounds do not re-aggregate and re-hash the same transactions."""

    def __init__(self, agent: SiloAgent, domestic_countries: tuple[str, ...]):
        self.agent = agent
        self.domestic_countries = domestic_countries
        self._lock = threading.Lock()
        self._cache: dict[int, _Split] = {}

    def get(self, buckets: int) -> _Split:
        with self._lock:
            fingerprint = data_fingerprint(self.agent.connector)
            cached = self._cache.get(buckets)
            if cached is None or cached.all.fingerprint != fingerprint:
                data = aml_examples(self.agent.connector, buckets, self.domestic_countries, fingerprint)
                held_out = held_out_mask(data.account_ids)
                cached = _Split(data, data.subset(~held_out), data.subset(held_out))
                self._cache = {buckets: cached}
            return cached


def _spec(body: dict[str, Any], silo: str) -> ModelSpec:
    try:
        spec = ModelSpec.from_dict(body["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainingRefused(f"agent {silo}: the request needs a valid model 'spec': {exc}") from None
    if spec.kind != "aml":
        raise TrainingRefused(
            f"agent {silo}: only AML models train on a silo's own rows (got kind '{spec.kind}'); "
            "credit models train on the governed zone's compliant features"
        )
    return spec


def _model(spec: ModelSpec, body: dict[str, Any], silo: str):
    model = spec.build()
    try:
        wire.load_into(model, wire.decode(body["weights"]))
    except KeyError:
        raise TrainingRefused(f"agent {silo}: the request needs the global 'weights' (base64 .npz)") from None
    except wire.WeightsError as exc:
        raise TrainingRefused(f"agent {silo}: {exc}") from None
    return model


def _enforce_dp(config: TrainConfig, required: DPConfig | None) -> tuple[TrainConfig, bool]:
    """The silo's own DP requirement wins over a weaker request (less noise, a larger clip)."""
    if required is None:
        return config, False
    asked = config.dp
    if asked and asked.noise_multiplier >= required.noise_multiplier and asked.max_grad_norm <= required.max_grad_norm and asked.delta <= required.delta:
        return config, False
    return replace(config, dp=required), True


def register_learning_actions(
    agent: SiloAgent, dp_required: DPConfig | None = None, domestic_countries: tuple[str, ...] | None = None
) -> None:
    """Serve train_round and evaluate_round on this agent.

    dp_required: where the silo's policy asks for differential privacy, every local round runs
    DP-SGD with at least this noise (whatever the coordinator asks). domestic_countries: the
    counterparty countries that are not cross-border for this silo's accounts; by default those of
    its region in the demo bank.
    """
    if domestic_countries is None:
        from fedlake.synth.default_model import REGION_COUNTRIES

        domestic_countries = tuple(REGION_COUNTRIES.get(agent.spec.region, ()))
    examples = _Examples(agent, domestic_countries)
    silo = agent.spec.name

    def leave(caller: Caller, body: dict[str, Any], operation: str, output: str, action: str, rule: str, result: dict[str, Any]) -> dict[str, Any]:
        """Ledger and count what leaves, then let it go."""
        payload = json.dumps(result)
        description = json.dumps({k: body.get(k) for k in ("spec", "config", "round", "split")}, sort_keys=True, default=str)
        agent.ledger.record(
            requester=caller.identity, purpose=body.get("purpose", DEFAULT_PURPOSE), silo=silo,
            destination=body.get("destination") or agent.policy.catalog.governed_region,
            operation=operation, fragment=f"{operation} {description}",
            columns=[{"output": output, "action": action, "sources": [], "rules": [rule]}],
            decision="allowed", rows=0, nbytes=len(payload),
        )
        agent.egress.add_bytes(len(payload))
        return result

    def train_round(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        agent.check_purpose(caller, body.get("purpose", DEFAULT_PURPOSE))
        spec = _spec(body, silo)
        try:
            config = TrainConfig.from_dict(dict(body.get("config") or {}))
        except (TypeError, ValueError) as exc:
            raise TrainingRefused(f"agent {silo}: invalid training config: {exc}") from None
        config = replace(config, seed=config.seed + int(body.get("round", 0)))
        config, enforced = _enforce_dp(config, dp_required)
        model = _model(spec, body, silo)
        split = examples.get(spec.params["buckets"])
        data, train, test = split.all, split.train, split.held_out
        history = [tuple(h) for h in body.get("dp_history") or []]
        local = train_local(model, train, config, dp_history=history)
        metrics: dict[str, Any] = {"steps": local.steps, "train_seconds": local.seconds, "data_fingerprint": data.fingerprint}
        if local.dp_record:
            # epsilon covers the weights only: loss and held-out metrics, computed from the same
            # accounts without noise, would leak outside that guarantee, so they stay here
            metrics["dp"] = {"record": list(local.dp_record), "delta": config.dp.delta, "enforced_by_silo": enforced}
            metrics["withheld"] = "train_loss and held-out metrics are not released under differential privacy"
        else:
            metrics["train_loss"] = local.loss
            metrics["train_positives"] = int(train.labels.sum())
            metrics["held_out"] = summary(evaluate(predict(model, test), test.labels)) if len(test) else None
        result = {"weights": wire.encode(wire.to_numpy(local.state)), "n_samples": local.n_samples,
                  "metrics": metrics, "epsilon": local.epsilon}
        return leave(caller, body, "train_round", "model_weights", "allow", TRAIN_RULE, result)

    def evaluate_round(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        agent.check_purpose(caller, body.get("purpose", DEFAULT_PURPOSE))
        spec = _spec(body, silo)
        model = _model(spec, body, silo)
        which = body.get("split", "held_out")
        if which not in ("held_out", "all"):
            raise TrainingRefused(f"agent {silo}: split must be 'held_out' or 'all', got {which!r}")
        split = examples.get(spec.params["buckets"])
        data = split.held_out if which == "held_out" else split.all
        scores = predict(model, data)
        result = {"metrics": summary(evaluate(scores, data.labels)), "histogram": score_histogram(scores, data.labels),
                  "data_fingerprint": data.fingerprint}
        return leave(caller, body, "evaluate_round", "model_metrics", "aggregate", EVALUATE_RULE, result)

    agent.register_action(TRAIN_ACTION, train_round)
    agent.register_action(EVALUATE_ACTION, evaluate_round)
