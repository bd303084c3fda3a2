"""Drift of a model's input features: the population stability index (PSI) between the feature
distribution a model was trained on and the one in the data now, from per-bin counts computed in
place as aggregates (no row leaves the zone that holds the features)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from fedlake.silos.base import Connector

BINS = 10
EPSILON = 1e-4  # an empty bin counts as a tiny share, so that PSI stays finite


def quantile_edges(connector: Connector, table: str, columns: Sequence[str], bins: int = BINS) -> dict[str, list[float]]:
    """Inner bin edges per column (the deciles of the training data), computed in place; one scalar
    quantile per column and edge, which DuckDB and PostgreSQL (PERCENTILE_CONT) both compute."""
    parts = ", ".join(f'quantile_cont("{c}", {i / bins}) AS "{c}:{i}"' for c in columns for i in range(1, bins))
    row = connector.execute(f'SELECT {parts} FROM "{table}"').read_all().to_pylist()[0]
    return {c: sorted({float(row[f"{c}:{i}"]) for i in range(1, bins) if row[f"{c}:{i}"] is not None}) for c in columns}


def bin_shares(connector: Connector, table: str, edges: dict[str, list[float]]) -> dict[str, list[float]]:
    """Share of rows in each bin per column, with the given inner edges; counted in place."""
    parts = []
    for column, inner in edges.items():
        bounds = [-math.inf, *inner, math.inf]
        for i in range(len(bounds) - 1):
            low = "TRUE" if bounds[i] == -math.inf else f'"{column}" >= {bounds[i]!r}'
            high = "TRUE" if bounds[i + 1] == math.inf else f'"{column}" < {bounds[i + 1]!r}'
            parts.append(f'count(*) FILTER (WHERE {low} AND {high}) AS "{column}:{i}"')
    row = connector.execute(f'SELECT count(*) AS "__n", {", ".join(parts)} FROM "{table}"').read_all().to_pylist()[0]
    total = max(row["__n"], 1)
    return {column: [row[f"{column}:{i}"] / total for i in range(len(inner) + 1)] for column, inner in edges.items()}


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index; above about 0.2 a feature has drifted enough to retrain."""
    if len(expected) != len(actual):
        raise ValueError("PSI needs the same bins on both sides")
    total = 0.0
    for e, a in zip(expected, actual):
        e, a = max(e, EPSILON), max(a, EPSILON)
        total += (a - e) * math.log(a / e)
    return total
