"""The federated coordinator: rounds of local training in every silo, aggregated into one model.

Each round sends the global weights and the hyper-parameters to every silo's agent at once (one
thread per silo, one deadline for the round). A silo that fails or answers late is left out of
that round and the reason recorded; with fewer than min_silos answers the round fails with an
error naming each missing silo and why. After every completed round the global model is
checkpointed atomically, so a restarted training resumes from the last completed round.

The silos evaluate registered versions only: the trained weights are registered first, evaluate()
names the version by its registry hash, and ModelRegistry.record_evaluation stores the metrics.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedlake.agent.client import AgentClient
from fedlake.errors import FedlakeError
from fedlake.learning import weights as wire
from fedlake.learning.agent_actions import DEFAULT_PURPOSE, EVALUATE_ACTION, TRAIN_ACTION
from fedlake.learning.aggregate import Strategy
from fedlake.learning.metrics import metrics_from_histograms, summary
from fedlake.learning.models import ModelSpec
from fedlake.learning.quorum import QuorumError
from fedlake.learning.registry import ModelVersion
from fedlake.learning.secagg import SecAggConfig, SecureOutcome, SecureRound
from fedlake.learning.secagg.ring import Layout
from fedlake.learning.train import DPConfig, TrainConfig, dp_epsilon
from fedlake.learning.weights import Weights

STATE_FILE = "state.json"
__all__ = ["CheckpointMismatch", "FederatedResult", "FederatedTrainer", "QuorumError"]


class CheckpointMismatch(FedlakeError):
    """The checkpoint folder holds another training (another model spec or strategy)."""


@dataclass
class FederatedResult:
    spec: ModelSpec
    weights: Weights
    history: list[dict[str, Any]]  # one entry per completed round
    epsilon: dict[str, float | None]  # per silo: spent epsilon over all rounds (None without DP)
    delta: dict[str, float]  # per silo that trained with DP: the delta its epsilon is for
    rounds: int
    resumed_from: int  # the last round already completed when fit() started (0: fresh start)
    fingerprints: dict[str, str] = field(default_factory=dict)  # per silo: the data it trained on


def _write_json_atomic(path: Path, value: Any) -> None:
    wire.write_atomic(path, json.dumps(value, indent=1, default=str).encode())


class FederatedTrainer:
    """Trains `spec` across `clients` (silo name -> agent client) for `rounds` rounds.

    `config` holds the local hyper-parameters (epochs, lr, batch size, dp); the strategy adds its
    own (FedProx's mu). The first round starts from `initial_weights`, else from the spec built
    with `seed`; a checkpoint in `checkpoint_dir` takes precedence over both (that is the resume).
    `on_round(round, weights, record)` is called after each completed round.

    With `secure_aggregation` (on by default; None turns it off) every round of two or more silos
    is a secure-aggregation round: the coordinator learns the sample-weighted sum of the updates
    and the total sample count, never one silo's weights or count. Each training has its own
    session id, so concurrent trainings through the same agents keep apart.

    `dp_by_silo` names the DP-SGD each named silo's rounds run with, in place of config.dp: what
    its policy requires (fedlake.learning.silo_dp.required_dp), since a silo refuses less.
    """

    def __init__(
        self,
        clients: dict[str, AgentClient],
        spec: ModelSpec,
        strategy: Strategy,
        rounds: int,
        min_silos: int,
        round_timeout_s: float,
        checkpoint_dir: str | os.PathLike,
        config: TrainConfig | None = None,
        purpose: str = DEFAULT_PURPOSE,
        destination: str | None = None,
        initial_weights: Weights | None = None,
        seed: int = 0,
        on_round: Callable[[int, Weights, dict[str, Any]], None] | None = None,
        secure_aggregation: SecAggConfig | None = SecAggConfig(),
        dp_by_silo: Mapping[str, DPConfig] | None = None,
        data_versions: dict[str, dict[str, int]] | None = None,
    ):
        """data_versions: per silo, the Delta versions of its tables to train on (time travel, e.g.
        `fingerprint_versions` of a model version's fingerprint, to retrain on exactly its data);
        a silo not named trains on its tables as they are now."""
        if not clients:
            raise ValueError("FederatedTrainer needs at least one silo client")
        if not 1 <= min_silos <= len(clients):
            raise ValueError(f"min_silos must be between 1 and the number of silos ({len(clients)}); got {min_silos}")
        if rounds < 1 or round_timeout_s <= 0:
            raise ValueError(f"rounds must be >= 1 and round_timeout_s > 0; got {rounds} and {round_timeout_s}")
        self.clients = dict(clients)
        self.spec = spec
        self.strategy = strategy
        self.rounds = rounds
        self.min_silos = min_silos
        self.round_timeout_s = round_timeout_s
        self.checkpoint_dir = Path(checkpoint_dir)
        self.config = config or TrainConfig()
        self.purpose = purpose
        self.destination = destination
        self.initial_weights = initial_weights
        self.seed = seed
        self.on_round = on_round
        self.secure_aggregation = secure_aggregation
        # per silo, the DP-SGD its rounds run with (what its policy requires: silo_dp.required_dp)
        self.dp_by_silo = {silo: asdict(dp) for silo, dp in (dp_by_silo or {}).items()}
        self.data_versions = dict(data_versions or {})
        if secure_aggregation is not None and len(clients) > 1:
            secure_aggregation.threshold_for(len(clients), min_silos)
        self.session = uuid.uuid4().hex

    # -- checkpoints ----------------------------------------------------------------------------

    def _load_checkpoint(self) -> dict[str, Any] | None:
        path = self.checkpoint_dir / STATE_FILE
        if not path.exists():
            return None
        state = json.loads(path.read_text())
        if state["spec"] != self.spec.to_dict() or state["strategy"] != self.strategy.to_dict():
            raise CheckpointMismatch(
                f"{path} belongs to another training (spec {state['spec']}, strategy {state['strategy']}), not "
                f"{self.spec.to_dict()} with {self.strategy.to_dict()}: use another checkpoint_dir, or remove it to start over"
            )
        state["weights"] = wire.load(self.checkpoint_dir / state["weights_file"])
        return state

    def _save_checkpoint(self, round_: int, weights: Weights, history: list, dp_history: dict, fingerprints: dict) -> None:
        """The weights file first, then the state that points to it: a crash between the two
        leaves the previous round's checkpoint intact."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        weights_file = f"weights-round-{round_:04d}.npz"
        wire.save(self.checkpoint_dir / weights_file, weights)
        previous = self.checkpoint_dir / STATE_FILE
        old = json.loads(previous.read_text())["weights_file"] if previous.exists() else None
        _write_json_atomic(previous, {
            "spec": self.spec.to_dict(), "strategy": self.strategy.to_dict(), "config": self.config.to_dict(),
            "round": round_, "weights_file": weights_file, "history": history, "dp_history": dp_history,
            "fingerprints": fingerprints,
        })
        if old and old != weights_file:
            (self.checkpoint_dir / old).unlink(missing_ok=True)

    # -- one call to every silo -----------------------------------------------------------------

    def _ask_all(self, action: str, bodies: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, str], dict[str, float]]:
        """Call `action` on every silo at once; answers within the deadline, reasons for the rest."""
        answers: dict[str, Any] = {}
        left_out: dict[str, str] = {}
        seconds: dict[str, float] = {}
        pool = ThreadPoolExecutor(max_workers=len(bodies), thread_name_prefix=f"fedlake-{action}")

        def call(silo: str) -> Any:
            t0 = time.perf_counter()
            answer = self.clients[silo].action(action, **bodies[silo])
            seconds[silo] = time.perf_counter() - t0
            return answer

        futures: dict[Future, str] = {pool.submit(call, silo): silo for silo in bodies}
        done, late = wait(futures, timeout=self.round_timeout_s)
        # A late silo keeps its thread until its call returns; the round does not wait for it.
        pool.shutdown(wait=False, cancel_futures=True)
        for future in done:
            silo = futures[future]
            try:
                answers[silo] = future.result()
            except Exception as exc:  # any failure of one silo is that silo's, not the round's
                left_out[silo] = f"failed: {type(exc).__name__}: {exc}"
        for future in late:
            left_out[futures[future]] = f"no answer within the round timeout of {self.round_timeout_s:g}s"
        return answers, left_out, {silo: seconds[silo] for silo in answers}

    def _quorum(self, what: str, answered: int, left_out: dict[str, str]) -> None:
        if answered >= self.min_silos:
            return
        reasons = "; ".join(f"{silo}: {why}" for silo, why in sorted(left_out.items()))
        raise QuorumError(
            f"{what}: {answered} of {len(self.clients)} silos answered, fewer than min_silos={self.min_silos} "
            f"[{reasons}]. Bring the silos back (or lower min_silos) and run again: training resumes from the "
            f"last completed round in {self.checkpoint_dir}",
            left_out,
        )

    def _secure_round(self, round_: int, weights: Weights, bodies: dict[str, dict[str, Any]]) -> SecureOutcome | None:
        """The round's updates summed under masks, or None where it is a plain round."""
        if self.secure_aggregation is None or len(self.clients) < 2:
            return None
        secure = SecureRound(self.secure_aggregation, self._ask_all, self._quorum, list(self.clients), self.min_silos,
                             round_, f"{self.session}-r{round_}", self.purpose)
        return secure.run(Layout.of(weights), TRAIN_ACTION, bodies)

    def _plain_update(self, answer: dict[str, Any]) -> tuple[Weights, int]:
        update = wire.decode(answer["weights"])
        wire.load_into(self.spec.build(), update)
        n = int(answer["n_samples"])
        if n <= 0:
            raise ValueError(f"n_samples must be positive, got {n}")
        return update, n

    # -- training -------------------------------------------------------------------------------

    def fit(self) -> FederatedResult:
        state = self._load_checkpoint()
        if state:
            weights, done_rounds = state["weights"], state["round"]
            history, dp_history, fingerprints = state["history"], state["dp_history"], state["fingerprints"]
        else:
            model = self.spec.build(seed=self.seed)
            weights = self.initial_weights if self.initial_weights is not None else wire.model_weights(model)
            wire.load_into(model, weights)
            done_rounds, history, dp_history, fingerprints = 0, [], {}, {}
        resumed_from = done_rounds
        hyper = self.strategy.configure(self.config.to_dict())
        for round_ in range(done_rounds + 1, self.rounds + 1):
            started = time.perf_counter()
            payload = wire.encode(weights)
            bodies = {
                silo: {"spec": self.spec.to_dict(), "weights": payload, "round": round_,
                       "config": {**hyper, "dp": self.dp_by_silo[silo]} if silo in self.dp_by_silo else hyper,
                       "purpose": self.purpose, "destination": self.destination, "dp_history": dp_history.get(silo, {}).get("records", []),
                       **({"data_versions": self.data_versions[silo]} if silo in self.data_versions else {})}
                for silo in self.clients
            }
            secure = self._secure_round(round_, weights, bodies)
            answers, left_out, seconds = (secure.answers, secure.left_out, secure.seconds) if secure else self._ask_all(TRAIN_ACTION, bodies)
            results: list[tuple[Weights, int]] = [(secure.mean, secure.n_samples)] if secure else []
            record: dict[str, Any] = {"round": round_, "participants": [], "left_out": left_out, "samples": {},
                                      "metrics": {}, "epsilon": {}, "bytes_in": {}}
            if secure:
                record["secure_aggregation"] = secure.cost
                record["samples_total"] = secure.n_samples
            for silo, answer in sorted(answers.items()):
                if not secure:
                    try:
                        results.append(self._plain_update(answer))
                    except (KeyError, TypeError, ValueError) as exc:
                        left_out[silo] = f"sent an unusable answer: {type(exc).__name__}: {exc}"
                        continue
                    record["samples"][silo] = results[-1][1]
                record["participants"].append(silo)
                record["metrics"][silo] = answer.get("metrics") or {}
                record["epsilon"][silo] = answer.get("epsilon")
                record["bytes_in"][silo] = secure.cost["masked_bytes"][silo] if secure else len(json.dumps(answer))
                dp = record["metrics"][silo].get("dp")
                if dp:
                    spent = dp_history.setdefault(silo, {"records": [], "delta": dp["delta"]})
                    spent["records"].append(dp["record"])
                    spent["delta"] = dp["delta"]
                if record["metrics"][silo].get("data_fingerprint"):
                    fingerprints[silo] = record["metrics"][silo]["data_fingerprint"]
            self._quorum(f"round {round_}", len(record["participants"]), left_out)
            weights = self.strategy.aggregate(results)
            record["silo_seconds"] = {silo: seconds[silo] for silo in record["participants"]}
            record["bytes_out"] = len(payload) * len(self.clients)
            record["seconds"] = time.perf_counter() - started  # the whole round, checkpoint excepted
            history.append(record)
            self._save_checkpoint(round_, weights, history, dp_history, fingerprints)
            if self.on_round:
                self.on_round(round_, weights, record)
        epsilon = {
            silo: dp_epsilon([tuple(r) for r in dp_history[silo]["records"]], dp_history[silo]["delta"]) if silo in dp_history else None
            for silo in self.clients
        }
        delta = {silo: spent["delta"] for silo, spent in dp_history.items()}
        return FederatedResult(self.spec, weights, history, epsilon, delta, self.rounds, resumed_from, fingerprints)

    def evaluate(self, model: ModelVersion | str, split: str = "held_out") -> dict[str, Any]:
        """Federated evaluation of a registered version (or its registry hash): each silo scores its
        own (held-out) accounts against its own labels and releases a score histogram of bins of at
        least its min_count accounts; per-silo and pooled metrics are computed here from those.
        Returns {"model", "pooled", "per_silo", "suppressed_rows", "fingerprints", "left_out"}."""
        if isinstance(model, ModelVersion):
            reference = model.sha256
        elif isinstance(model, str):
            reference = model
        else:
            raise TypeError(f"evaluate takes a registered model version or its registry hash, not {type(model).__name__}: register the weights first")
        bodies = {silo: {"model": reference, "split": split, "purpose": self.purpose, "destination": self.destination}
                  for silo in self.clients}
        answers, left_out, _ = self._ask_all(EVALUATE_ACTION, bodies)
        self._quorum("evaluation", len(answers), left_out)
        histograms = {silo: a["histogram"] for silo, a in sorted(answers.items())}
        return {
            "model": reference,
            "pooled": metrics_from_histograms(list(histograms.values())),
            "per_silo": {silo: summary(metrics_from_histograms([h])) for silo, h in histograms.items()},
            "suppressed_rows": {silo: h.get("suppressed_rows", 0) for silo, h in histograms.items()},
            "fingerprints": {silo: a.get("data_fingerprint") for silo, a in sorted(answers.items())},
            "left_out": left_out,
        }
