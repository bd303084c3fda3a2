"""policies.yaml `training`: what each silo requires of a federated training round on its rows.

    training:
      sg_lake:
        dp: {noise_multiplier: 1.3, max_grad_norm: 1.0, delta: 1.0e-5, max_epsilon: 3.0}

A silo with `dp` trains only DP-SGD rounds (Opacus, sample-level: one account is one example)
with at least this noise multiplier, at most this per-example clip and at most this delta; a round
asked with less is refused, never silently changed, so that what the coordinator aggregates is
what it asked for. `max_epsilon`, when given, is the most the silo lets its training spend: it
refuses a round whose epsilon, composed with the rounds it already trained (RDP accountant), would
pass it. The coordinator reads the same declaration and asks each silo for what it requires.

Plain values only (no torch here): fedlake.learning turns a requirement into its DPConfig.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fedlake.errors import ConfigError

DP_KEYS = ("noise_multiplier", "max_grad_norm", "delta", "max_epsilon")
SILO_KEYS = ("dp",)


@dataclass(frozen=True)
class DPRequirement:
    """The weakest DP-SGD a silo accepts for a round trained on its rows."""

    noise_multiplier: float
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    max_epsilon: float | None = None
    where: str = ""  # the file and key that declared it, quoted in every refusal


@dataclass(frozen=True)
class TrainingPolicy:
    """Per silo: its DP requirement, if it has one."""

    dp: dict[str, DPRequirement] = field(default_factory=dict)

    def dp_for(self, silo: str) -> DPRequirement | None:
        return self.dp.get(silo)


def _number(path: str, key: str, value: Any, low: float, high: float | None, low_open: bool = True) -> float:
    bound = f"in ({low:g}, {high:g})" if high is not None else (f"> {low:g}" if low_open else f">= {low:g}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(path, key, f"expected a number {bound}, got {value!r}")
    ok = (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        raise ConfigError(path, key, f"expected a number {bound}, got {value!r}")
    return float(value)


def parse_training(raw: Any, silos: list[str] | tuple[str, ...], path: str) -> TrainingPolicy:
    """The `training` section, checked against the catalog's silos; every problem is one
    ConfigError naming the file and the key."""
    if raw is None:
        return TrainingPolicy()
    if not isinstance(raw, dict):
        raise ConfigError(path, "training", "expected a mapping of silo name to its requirements, e.g. {sg_lake: {dp: {...}}}")
    dp: dict[str, DPRequirement] = {}
    for silo, body in raw.items():
        key = f"training.{silo}"
        if silo not in silos:
            raise ConfigError(path, key, f"unknown silo (known: {', '.join(silos)})")
        if not isinstance(body, dict):
            raise ConfigError(path, key, "expected a mapping, e.g. {dp: {noise_multiplier: 1.3, max_epsilon: 3.0}}")
        unknown = sorted(set(body) - set(SILO_KEYS))
        if unknown:
            raise ConfigError(path, f"{key}.{unknown[0]}", f"unknown key (allowed: {', '.join(SILO_KEYS)})")
        if body.get("dp") is None:
            continue
        spec = body["dp"]
        where = f"{key}.dp"
        if not isinstance(spec, dict):
            raise ConfigError(path, where, "expected {noise_multiplier: N, max_grad_norm: C, delta: D, max_epsilon: E}")
        unknown = sorted(set(spec) - set(DP_KEYS))
        if unknown:
            raise ConfigError(path, f"{where}.{unknown[0]}", f"unknown key (allowed: {', '.join(DP_KEYS)})")
        if "noise_multiplier" not in spec:
            raise ConfigError(path, f"{where}.noise_multiplier", "required: the least noise (std over clip norm) a round may add")
        max_epsilon = spec.get("max_epsilon")
        dp[str(silo)] = DPRequirement(
            noise_multiplier=_number(path, f"{where}.noise_multiplier", spec["noise_multiplier"], 0, None),
            max_grad_norm=_number(path, f"{where}.max_grad_norm", spec.get("max_grad_norm", 1.0), 0, None),
            delta=_number(path, f"{where}.delta", spec.get("delta", 1e-5), 0, 1),
            max_epsilon=None if max_epsilon is None else _number(path, f"{where}.max_epsilon", max_epsilon, 0, None),
            where=f"{path}: {where}",
        )
    return TrainingPolicy(dp=dp)
