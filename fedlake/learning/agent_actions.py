"""The training actions a silo agent serves: a local round, and an evaluation of a registered model.

Both build the silo's AML examples in place, from its own tables, inside the agent's process; the
memos and the rows never leave it. Only a client holding the `train` role (the coordinator) may
call them. What leaves is, for train_round, the new weights (DP-SGD clipped and noised where the
silo requires it), the number of training accounts and the spent epsilon: no loss or metric,
which a crafted global model would turn into a question about chosen accounts. evaluate_round
scores a version found in the model registry by its hash, never weights sent in the request (a
crafted model would isolate one account, or count the memos holding a chosen word), and releases
only a score histogram whose every bin holds at least min_count accounts, Laplace-noised where
the silo requires DP. Each answer is ledgered like a query's egress (operation, decision, bytes;
rows 0) and counted in the agent's egress counter.

Evaluation against the bank's full ground truth is not an agent action: sending the truth's
account ids in and per-account scores out would move per-account data across the boundary. The
agent evaluates against the labels its silo holds (aml_cases) on a held-out fifth of its accounts;
the full-truth evaluation is the benchmark's and the tests', acting as the bank's evaluator with
direct access to each silo.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedlake.agent.agent import Caller, Forbidden, SiloAgent
from fedlake.errors import SiloError
from fedlake.learning import weights as wire
from fedlake.learning.data import AMLData, data_fingerprint, held_out_mask
from fedlake.learning.metrics import release_histogram
from fedlake.learning.models import AML_KINDS, ModelSpec
from fedlake.learning.registry import ModelRegistry, RegistryError
from fedlake.learning.secagg.actions import SECAGG_RULE, masked_answer, peer_key_source, register_secagg_actions
from fedlake.learning.silo_examples import examples_key, silo_examples
from fedlake.learning.silo_dp import Requirement, SiloPrivacy, requirement_from_policy
from fedlake.learning.train import DPConfig, TrainConfig, predict, train_local

TRAIN_ACTION = "train_round"
EVALUATE_ACTION = "evaluate_round"
DEFAULT_PURPOSE = "aml"
TRAIN_RULE = "training: only weights leave"
EVALUATE_RULE = "evaluation: only a score histogram of registered models leaves, min_count per bin"
TRAIN_ROLE = "train"
MIN_COUNT = 10  # the fewest accounts a released histogram bin may hold
RELEASE_EPSILON = 1.0  # the histogram's epsilon where the silo requires DP and none is given
EVALUATE_FIELDS = ("model", "split", "purpose", "destination")
EXAMPLE_SETS = 4  # example sets an agent keeps at once, one per kind of model being trained


class TrainingRefused(Forbidden):
    """The silo will not train or evaluate as asked (wrong model kind, weights to evaluate, an
    unregistered version...). Decided from the request, the registry and the policy alone, so its
    message may leave the agent, as any refusal's does."""


@dataclass
class _Split:
    all: AMLData
    train: AMLData
    held_out: AMLData


class _Examples:
    """The silo's AML examples and their fixed train/held-out split, rebuilt only when the data
    changed (by fingerprint), so that rounds do not re-aggregate and re-hash the same transactions.
    One set per kind of examples (n-gram buckets, tokenizer), up to EXAMPLE_SETS: specialised
    models trained at the same time do not evict each other's examples every round."""

    def __init__(self, agent: SiloAgent, domestic_countries: tuple[str, ...]):
        self.agent = agent
        self.domestic_countries = domestic_countries
        self._lock = threading.Lock()
        self._cache: dict[Hashable, _Split] = {}
        self._pinned: tuple[Hashable, Any] | None = None  # the Delta versions last pinned, and the lake read at them

    def _connector(self, versions: dict[str, int] | None):
        """The silo's data as it is now, or as it was at the given Delta versions of its tables
        (time travel: retraining on exactly what a model version saw, by its fingerprint)."""
        if not versions:
            return self.agent.connector
        silo, key = self.agent.spec.name, tuple(sorted(versions.items()))
        if self._pinned is None or self._pinned[0] != key:
            at_versions = getattr(self.agent.connector, "at_versions", None)
            if at_versions is None or not isinstance(versions, dict):
                raise TrainingRefused(f"agent {silo}: 'data_versions' pins Delta versions of a lake's tables; this silo keeps none")
            try:
                self._pinned = (key, at_versions(versions))
            except SiloError as exc:
                raise TrainingRefused(f"agent {silo}: {exc}") from None
        return self._pinned[1]

    def get(self, spec: ModelSpec, versions: dict[str, int] | None = None) -> _Split:
        key = (examples_key(spec), tuple(sorted((versions or {}).items())))
        with self._lock:
            connector = self._connector(versions)
            fingerprint = data_fingerprint(connector)
            cached = self._cache.get(key)
            if cached is None or cached.all.fingerprint != fingerprint:
                data = silo_examples(connector, spec, self.domestic_countries, fingerprint)
                held_out = held_out_mask(data.account_ids)
                cached = _Split(data, data.subset(~held_out), data.subset(held_out))
                self._cache = {k: v for k, v in self._cache.items() if v.all.fingerprint == fingerprint and k != key}
                self._cache[key] = cached
                while len(self._cache) > EXAMPLE_SETS:
                    self._cache.pop(next(iter(self._cache)))
            return cached


def _spec(body: dict[str, Any], silo: str) -> ModelSpec:
    try:
        spec = ModelSpec.from_dict(body["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainingRefused(f"agent {silo}: the request needs a valid model 'spec': {exc}") from None
    return _aml_only(spec, silo)


def _aml_only(spec: ModelSpec, silo: str) -> ModelSpec:
    if spec.kind not in AML_KINDS:
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


def register_learning_actions(
    agent: SiloAgent,
    dp_required: DPConfig | None = None,
    domestic_countries: tuple[str, ...] | None = None,
    registry: ModelRegistry | str | os.PathLike | None = None,
    min_count: int = MIN_COUNT,
    release_epsilon: float | None = None,
    peer_keys: str | os.PathLike | Mapping[str, Ed25519PublicKey] | None = None,
) -> None:
    """Serve train_round and evaluate_round on this agent, and the secure-aggregation stages.

    dp_required: the DP-SGD a round must at least run with here; by default what policies.yaml's
    `training.<silo>.dp` declares (with its max_epsilon). A round asked with less is refused, and so
    is one that would take the silo past its max_epsilon (fedlake.learning.silo_dp). Where DP is
    required, evaluation histograms are Laplace-noised with release_epsilon (RELEASE_EPSILON unless
    given; given without a requirement, it noises the histograms alone).
    domestic_countries: the counterparty countries that are not
    cross-border for this silo's accounts; by default those its region declares in silos.yaml.
    registry: the model registry (the governed zone's models folder) whose versions evaluate_round
    may score; without one, evaluation is refused. min_count: the fewest accounts a released
    histogram bin may hold. peer_keys: the Ed25519 public keys (or the data folder whose keys/ holds
    them; FEDLAKE_LEDGER_KEYS if not given) that check the other silos' secure-aggregation adverts.
    """
    if domestic_countries is None:
        catalog = agent.policy.catalog
        domestic_countries = catalog.money.region(agent.spec.region, catalog.path).domestic_countries
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    privacy = SiloPrivacy(agent.spec.name, Requirement(dp_required) if dp_required else requirement_from_policy(agent.policy, agent.spec.name))
    if release_epsilon is None and privacy.requirement is not None:
        release_epsilon = RELEASE_EPSILON
    models = registry if isinstance(registry, ModelRegistry) or registry is None else ModelRegistry(registry)
    examples = _Examples(agent, domestic_countries)
    silo = agent.spec.name
    # One noised release per (model, split, data): asking again returns it, not a fresh draw that
    # averaging would strip of its noise.
    released: dict[tuple[str, str, str], dict[str, Any]] = {}
    released_lock = threading.Lock()

    def admit(caller: Caller, body: dict[str, Any]) -> None:
        agent.check_role(caller, TRAIN_ROLE, "train or evaluate models")
        agent.check_purpose(caller, body.get("purpose", DEFAULT_PURPOSE))

    def leave(caller: Caller, body: dict[str, Any], operation: str, output: str, action: str, rule: str, result: dict[str, Any]) -> dict[str, Any]:
        """Ledger and count what leaves, then let it go."""
        payload = json.dumps(result)
        description = json.dumps({k: body.get(k) for k in ("spec", "config", "round", "model", "split")}, sort_keys=True, default=str)
        agent.ledger.record(
            requester=caller.identity, purpose=body.get("purpose", DEFAULT_PURPOSE), silo=silo,
            destination=body.get("destination") or agent.policy.catalog.governed_region,
            operation=operation, fragment=f"{operation} {description}",
            columns=[{"output": output, "action": action, "sources": [], "rules": [rule]}],
            decision="allowed", rows=0, nbytes=len(payload),
        )
        agent.egress.add_bytes(len(payload))
        return result

    participant = register_secagg_actions(agent, admit, leave, peer_key_source(peer_keys))

    def train_round(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        admit(caller, body)
        spec = _spec(body, silo)
        try:
            config = TrainConfig.from_dict(dict(body.get("config") or {}))
        except (TypeError, ValueError) as exc:
            raise TrainingRefused(f"agent {silo}: invalid training config: {exc}") from None
        config = replace(config, seed=config.seed + int(body.get("round", 0)))
        refusal = privacy.weaker_refusal(config)
        if refusal:
            raise TrainingRefused(refusal)
        model = _model(spec, body, silo)
        split = examples.get(spec, body.get("data_versions"))
        refusal = privacy.budget_refusal(config, len(split.train))
        if refusal:
            raise TrainingRefused(refusal)
        history = [tuple(h) for h in body.get("dp_history") or []]
        local = train_local(model, split.train, config, dp_history=history)
        metrics: dict[str, Any] = {"steps": local.steps, "train_seconds": local.seconds, "data_fingerprint": split.all.fingerprint}
        if local.dp_record:
            metrics["dp"] = {"record": list(local.dp_record), "delta": config.dp.delta, "max_grad_norm": config.dp.max_grad_norm,
                             "required_by": privacy.requirement.where if privacy.requirement else None,
                             "silo_epsilon": privacy.spend(local.dp_record, config.dp.delta)}
        update = wire.to_numpy(local.state)
        masked = masked_answer(participant, caller, body, update, local.n_samples, metrics, local.epsilon)
        if masked is not None:
            return leave(caller, body, "train_round", "masked_update", "allow", SECAGG_RULE, masked)
        result = {"weights": wire.encode(update), "n_samples": local.n_samples, "metrics": metrics, "epsilon": local.epsilon}
        return leave(caller, body, "train_round", "model_weights", "allow", TRAIN_RULE, result)

    def evaluate_round(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        admit(caller, body)
        extra = sorted(set(body) - set(EVALUATE_FIELDS))
        if extra:
            raise TrainingRefused(
                f"agent {silo}: evaluate_round scores registered model versions only, by their registry hash in 'model'; "
                f"the request also carries {extra}, refused"
            )
        if models is None:
            raise TrainingRefused(f"agent {silo}: no model registry to evaluate from: evaluation is refused")
        reference = body.get("model")
        try:
            version = models.by_hash(reference)
            spec = _aml_only(version.spec, silo)
            model = wire.load_into(spec.build(), version.verified_weights())
        except (RegistryError, wire.WeightsError, OSError) as exc:
            raise TrainingRefused(f"agent {silo}: model {reference!r} cannot be evaluated: {exc}") from None
        which = body.get("split", "held_out")
        if which not in ("held_out", "all"):
            raise TrainingRefused(f"agent {silo}: split must be 'held_out' or 'all', got {which!r}")
        split = examples.get(spec)
        data = split.held_out if which == "held_out" else split.all
        key = (version.sha256, which, split.all.fingerprint)
        with released_lock:
            histogram = released.get(key)
            if histogram is None:
                histogram = released[key] = release_histogram(predict(model, data), data.labels, min_count, release_epsilon)
        result = {"model": version.sha256, "histogram": histogram, "data_fingerprint": split.all.fingerprint}
        return leave(caller, body, "evaluate_round", "score_histogram", "aggregate", EVALUATE_RULE, result)

    agent.register_action(TRAIN_ACTION, train_round)
    agent.register_action(EVALUATE_ACTION, evaluate_round)
