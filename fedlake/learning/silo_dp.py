"""Differential privacy per silo in federated training: what a silo requires, what it has spent.

DP-FedAvg here is FedAvg over local DP-SGD (Opacus) in each silo: sample-level DP, where one
example is one account of that silo, clipped per example and noised before its weights leave. The
guarantee is the silo's own, for its own accounts: each silo accounts for its epsilon with the
RDP accountant over every round it trained. (User-level DP over silos, with noise added at the
coordinator, would protect a whole silo's contribution; with three silos it would drown the model.)

- A silo's requirement comes from policies.yaml (`training.<silo>.dp`, fedlake.policy.training).
  A round asked with weaker DP (less noise, a larger clip, a larger delta, or none) is refused;
  a round that would take the silo past its `max_epsilon` is refused before it trains.
- The silo keeps its own ledger of spent privacy (SiloPrivacy): a coordinator cannot reset it by
  sending an empty history.
- The coordinator asks each silo for what its policy requires (`required_dp`) and reports each
  silo's accounting after training (`dp_accounting`).
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass
from typing import Any

from fedlake.learning.train import DPConfig, DPRecord, TrainConfig, dp_epsilon
from fedlake.policy.model import Policy

DP_LEVEL = "sample-level: one account of the silo is one example (Opacus DP-SGD, Poisson sampling)"
ACCOUNTANT = "RDP (Opacus), composed over every round the silo trained"


@dataclass(frozen=True)
class Requirement:
    """The weakest DP-SGD a silo accepts, and the most epsilon it lets training spend."""

    dp: DPConfig
    max_epsilon: float | None = None
    where: str = "the agent's dp_required"

    def weaker(self, asked: DPConfig | None) -> bool:
        return asked is None or (
            asked.noise_multiplier < self.dp.noise_multiplier
            or asked.max_grad_norm > self.dp.max_grad_norm
            or asked.delta > self.dp.delta
        )

    def describe(self) -> str:
        return (f"noise_multiplier >= {self.dp.noise_multiplier:g}, max_grad_norm <= {self.dp.max_grad_norm:g}, "
                f"delta <= {self.dp.delta:g}" + (f", epsilon <= {self.max_epsilon:g}" if self.max_epsilon is not None else ""))


def requirement_from_policy(policy: Policy, silo: str) -> Requirement | None:
    """The silo's requirement declared in policies.yaml, if any."""
    declared = policy.training.dp_for(silo)
    if declared is None:
        return None
    dp = DPConfig(noise_multiplier=declared.noise_multiplier, max_grad_norm=declared.max_grad_norm, delta=declared.delta)
    return Requirement(dp, declared.max_epsilon, declared.where)


def required_dp(policy: Policy, silos: list[str] | tuple[str, ...], asked: DPConfig | None = None) -> dict[str, DPConfig]:
    """For the coordinator: the DP-SGD each silo whose policy requires DP must be asked for: what
    the training asks (`asked`) where that meets the requirement, else the requirement itself.
    Silos without a requirement are left out (they train as the training asks)."""
    found = {silo: requirement_from_policy(policy, silo) for silo in silos}
    return {silo: (r.dp if r.weaker(asked) else asked) for silo, r in found.items() if r is not None}


def _predicted_record(dp: DPConfig, n: int, config: TrainConfig) -> DPRecord:
    """The accountant entry a round will add, at most: Opacus samples each example with rate
    1 / batches-per-epoch and takes that many steps per epoch."""
    batches = math.ceil(n / min(config.batch_size, n))
    return (dp.noise_multiplier, 1.0 / batches, batches * config.epochs)


class SiloPrivacy:
    """One silo's DP requirement and its own account of what its training has spent."""

    def __init__(self, silo: str, requirement: Requirement | None):
        self.silo = silo
        self.requirement = requirement
        self._lock = threading.Lock()
        self._spent: list[DPRecord] = []

    def weaker_refusal(self, config: TrainConfig) -> str | None:
        """Why a round asked with this config may not train here (one line), or None: decided
        from the request alone, before any data is read."""
        required = self.requirement
        if required is None or not required.weaker(config.dp):
            return None
        asked = "no DP" if config.dp is None else (
            f"noise_multiplier {config.dp.noise_multiplier:g}, max_grad_norm {config.dp.max_grad_norm:g}, delta {config.dp.delta:g}")
        return f"agent {self.silo}: {required.where} requires DP-SGD with {required.describe()}; the round asked for {asked}: refused"

    def budget_refusal(self, config: TrainConfig, n_train: int) -> str | None:
        """Why a round on n_train examples would overspend the silo's max_epsilon (one line), or None."""
        required = self.requirement
        if required is None or required.max_epsilon is None or config.dp is None or n_train <= 0:
            return None
        with self._lock:
            after = dp_epsilon([*self._spent, _predicted_record(config.dp, n_train, config)], config.dp.delta)
        if after <= required.max_epsilon:
            return None
        return (f"agent {self.silo}: {required.where} allows epsilon {required.max_epsilon:g}; this round would bring "
                f"the silo's training to {after:.2f} (delta {config.dp.delta:g}): refused")

    def spend(self, record: DPRecord, delta: float) -> float:
        """Add a trained round's entry; the silo's epsilon over everything it trained since it started."""
        with self._lock:
            self._spent.append(tuple(record))
            return dp_epsilon(list(self._spent), delta)


@dataclass(frozen=True)
class SiloAccount:
    """What one silo's participation in a federated training cost in privacy."""

    silo: str
    epsilon: float | None  # None: the silo trained without DP
    delta: float | None
    noise_multiplier: float | None
    max_grad_norm: float | None
    sample_rate: float | None
    steps: int
    rounds: int
    required_by: str | None  # the policy key that required DP, None where the coordinator chose it
    silo_epsilon: float | None  # the silo's own account: every DP round it trained, this training or others
    level: str = DP_LEVEL
    accountant: str = ACCOUNTANT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dp_accounting(history: list[dict[str, Any]], silos: list[str] | tuple[str, ...]) -> dict[str, SiloAccount]:
    """Per silo, from the rounds of a FederatedResult's history: the epsilon spent over the rounds
    it took part in, with the settings that spent it."""
    accounts: dict[str, SiloAccount] = {}
    for silo in silos:
        rounds = [r["metrics"][silo] for r in history if silo in r.get("metrics", {})]
        dp_rounds = [m["dp"] for m in rounds if m.get("dp")]
        if not dp_rounds:
            accounts[silo] = SiloAccount(silo, None, None, None, None, None, sum(int(m.get("steps", 0)) for m in rounds),
                                         len(rounds), None, None)
            continue
        records = [tuple(d["record"]) for d in dp_rounds]
        last = dp_rounds[-1]
        accounts[silo] = SiloAccount(
            silo=silo,
            epsilon=dp_epsilon(records, last["delta"]),
            delta=last["delta"],
            noise_multiplier=min(r[0] for r in records),
            max_grad_norm=max(d.get("max_grad_norm", 0.0) for d in dp_rounds) or None,
            sample_rate=max(r[1] for r in records),
            steps=sum(int(r[2]) for r in records),
            rounds=len(rounds),
            required_by=last.get("required_by"),
            silo_epsilon=last.get("silo_epsilon"),
        )
    return accounts
