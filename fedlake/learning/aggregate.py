"""Aggregation strategies: how the coordinator turns the silos' new weights into the global model.

FedAvg averages the weights, each silo weighted by its number of training examples, so a silo
counts as much as its data. FedProx aggregates the same way; what differs is the local step: the
strategy sends each silo a proximal weight mu, which keeps silos with skewed data from pulling the
shared model towards their own optimum during their local epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedlake.learning.weights import Weights


def fedavg(results: list[tuple[Weights, int]]) -> Weights:
    """Sample-weighted mean of the weights. Integer tensors (counters) are not averaged: they are
    taken from the silo with the most examples."""
    if not results:
        raise ValueError("fedavg: no results to aggregate")
    if any(n <= 0 for _, n in results):
        raise ValueError(f"fedavg: every result needs a positive sample count; got {[n for _, n in results]}")
    keys = set(results[0][0])
    for weights, _ in results[1:]:
        if set(weights) != keys:
            raise ValueError(f"fedavg: results hold different tensors: {sorted(keys ^ set(weights))}")
    total = float(sum(n for _, n in results))
    largest = max(results, key=lambda r: r[1])[0]
    merged: Weights = {}
    for key in sorted(keys):
        if not np.issubdtype(results[0][0][key].dtype, np.floating):
            merged[key] = largest[key].copy()
            continue
        acc = np.zeros(results[0][0][key].shape, dtype=np.float64)
        for weights, n in results:
            acc += weights[key].astype(np.float64) * (n / total)
        merged[key] = acc.astype(results[0][0][key].dtype)
    return merged


@dataclass(frozen=True)
class FedAvg:
    name: str = "fedavg"

    def configure(self, hyper_parameters: dict[str, Any]) -> dict[str, Any]:
        """The hyper-parameters sent to every silo for its local step."""
        return {**hyper_parameters, "mu": 0.0}

    def aggregate(self, results: list[tuple[Weights, int]]) -> Weights:
        return fedavg(results)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass(frozen=True)
class FedProx(FedAvg):
    mu: float = 0.01
    name: str = "fedprox"

    def __post_init__(self) -> None:
        if self.mu <= 0:
            raise ValueError(f"FedProx needs mu > 0 (mu = 0 is FedAvg); got {self.mu}")

    def configure(self, hyper_parameters: dict[str, Any]) -> dict[str, Any]:
        return {**hyper_parameters, "mu": self.mu}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mu": self.mu}


Strategy = FedAvg


def strategy_from_dict(raw: dict[str, Any]) -> Strategy:
    name = raw.get("name")
    if name == "fedavg":
        return FedAvg()
    if name == "fedprox":
        return FedProx(mu=float(raw.get("mu", 0.01)))
    raise ValueError(f"unknown aggregation strategy {name!r} (known: fedavg, fedprox)")
