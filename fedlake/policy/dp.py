"""Differentially private COUNT / SUM / AVG for columns whose policy rule is `aggregate`.

The agent computes, inside the silo, one row per group: the key columns, `__fl_rows` (rows left
after contribution bounding: each subject keeps at most `max_rows` rows in the whole query), and per
aggregate a clamped sum or a non-null count. `release` turns that table into what may leave: groups
chosen by OpenDP's thresholded Laplace (partition selection, as Google's DP SQL does, so that a key
held by few subjects never appears), and values with OpenDP Laplace noise calibrated by OpenDP from
the sensitivity that contribution bounding guarantees. Budget accounting lives elsewhere; this
module says exactly what one release spent (ReleaseReport), read from OpenDP's privacy maps.

Privacy unit: one subject. A subject has at most `max_rows` rows in the query, so it touches at
most max_rows groups (l0), at most max_rows rows of one group (linf) and max_rows rows in all (l1).
Caveat: sums arrive as floats computed by the silo's engine, outside OpenDP, so the sensitivity
assumes exact arithmetic (float rounding in a long sum is not accounted for).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fedlake.errors import ConfigError

ROWS = "__fl_rows"
PERIODS = ("day", "week", "month")
KINDS = ("count_rows", "count", "sum", "avg")
_DP_KEYS = {"epsilon", "delta", "budget", "max_rows_per_subject", "bounds"}
_BUDGET_KEYS = {"epsilon", "delta", "period"}


@dataclass(frozen=True)
class DPSettings:
    """The `dp:` section of policies.yaml: per-query (epsilon, delta), the budget per identity x
    purpose x silo x period, the rows kept per subject, and declared value bounds."""

    epsilon: float
    delta: float
    budget_epsilon: float
    budget_delta: float
    period: str
    max_rows: int
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)

    def bounds_for(self, silo: str, table: str, column: str) -> tuple[float, float] | None:
        """Most specific pattern wins: silo.table.col, *.table.col, silo.*.col, *.*.col.
        None means no bounds are declared, so the column cannot be summed or averaged."""
        for pattern in (f"{silo}.{table}.{column}", f"*.{table}.{column}", f"{silo}.*.{column}", f"*.*.{column}"):
            if pattern in self.bounds:
                return self.bounds[pattern]
        return None

    def period_start(self, now: datetime) -> datetime:
        """UTC start of the budget period holding `now` (a naive `now` is read as UTC); ISO weeks
        start on Monday."""
        now = now.astimezone(timezone.utc) if now.tzinfo else now.replace(tzinfo=timezone.utc)
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.period == "day":
            return day
        if self.period == "week":
            return day - timedelta(days=day.weekday())
        return day.replace(day=1)


def _number(raw: dict, name: str, path: str, key: str) -> float:
    if name not in raw:
        raise ConfigError(path, key, "missing")
    value = raw[name]
    if isinstance(value, str):
        raise ConfigError(path, key, f"expected a number, got text {value!r} (YAML reads 1e-6 as text: write 1.0e-6)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(path, key, f"expected a finite number, got {value!r}")
    return float(value)


def _unknown(raw: dict, allowed: set[str], path: str, where: str) -> None:
    for name in raw:
        if name not in allowed:
            raise ConfigError(path, f"{where}.{name}", f"unknown field (allowed: {', '.join(sorted(allowed))})")


def parse_dp(raw: Any, path: str, where: str = "dp") -> DPSettings | None:
    """Parse the `dp:` mapping; None when the section is absent. Every malformed value raises a
    ConfigError naming its key, because a silently defaulted privacy parameter is a leak."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(path, where, "expected a mapping: {epsilon, delta, budget, max_rows_per_subject, bounds}")
    _unknown(raw, _DP_KEYS, path, where)
    epsilon = _number(raw, "epsilon", path, f"{where}.epsilon")
    if epsilon <= 0:
        raise ConfigError(path, f"{where}.epsilon", f"must be > 0, got {epsilon}")
    delta = _number(raw, "delta", path, f"{where}.delta")
    if not 0 <= delta < 1:
        raise ConfigError(path, f"{where}.delta", f"must be in [0, 1), got {delta}")
    budget = raw.get("budget")
    if not isinstance(budget, dict):
        raise ConfigError(path, f"{where}.budget", "expected {epsilon: E, delta: D, period: day | week | month}")
    _unknown(budget, _BUDGET_KEYS, path, f"{where}.budget")
    budget_epsilon = _number(budget, "epsilon", path, f"{where}.budget.epsilon")
    if budget_epsilon < epsilon:
        raise ConfigError(path, f"{where}.budget.epsilon", f"must be >= the per-query epsilon {epsilon}, got {budget_epsilon}")
    budget_delta = _number(budget, "delta", path, f"{where}.budget.delta")
    if not delta <= budget_delta < 1:
        raise ConfigError(path, f"{where}.budget.delta", f"must be in [per-query delta {delta}, 1), got {budget_delta}")
    period = budget.get("period")
    if period not in PERIODS:
        raise ConfigError(path, f"{where}.budget.period", f"expected one of {', '.join(PERIODS)}, got {period!r}")
    max_rows = raw.get("max_rows_per_subject")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ConfigError(path, f"{where}.max_rows_per_subject", f"expected a whole number >= 1, got {max_rows!r}")
    bounds_raw = raw.get("bounds", {}) or {}
    if not isinstance(bounds_raw, dict):
        raise ConfigError(path, f"{where}.bounds", "expected a mapping of silo.table.column: [lo, hi]")
    bounds = {}
    for pattern, pair in bounds_raw.items():
        key = f"{where}.bounds.{pattern}"
        parts = str(pattern).split(".")
        if len(parts) != 3 or not all(parts) or parts[2] == "*":
            raise ConfigError(path, key, "expected silo.table.column (use * for any silo or table)")
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ConfigError(path, key, f"expected [lo, hi], got {pair!r}")
        lo = _number({"lo": pair[0]}, "lo", path, key)
        hi = _number({"hi": pair[1]}, "hi", path, key)
        if lo >= hi:
            raise ConfigError(path, key, f"lo must be < hi, got [{lo}, {hi}]")
        bounds[str(pattern)] = (lo, hi)
    return DPSettings(epsilon, delta, budget_epsilon, budget_delta, period, max_rows, bounds)


@dataclass(frozen=True)
class Aggregate:
    """One output of the query. `input` names the groups-table column that holds the clamped sum
    (sum, avg) or the non-null count (count); count_rows reads `__fl_rows`. For avg, `count_input`
    is the denominator: the column's non-null count, or `__fl_rows` when the column has no nulls."""

    output: str
    kind: str
    input: str = ROWS
    lo: float = 0.0
    hi: float = 1.0
    count_input: str = ROWS

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"aggregate {self.output}: unknown kind {self.kind!r} (allowed: {', '.join(KINDS)})")
        if not self.lo < self.hi:
            raise ValueError(f"aggregate {self.output}: bounds need lo < hi, got [{self.lo}, {self.hi}]")


@dataclass(frozen=True)
class ReleaseReport:
    """What one release spent, as OpenDP's privacy maps say. `scales` is the Laplace scale per
    groups-table column that was noised (std = scale * sqrt(2)); `threshold` is the noisy-count
    threshold for partition selection (0.0 when there was no GROUP BY and nothing to select)."""

    epsilon: float
    delta: float
    groups_in: int
    groups_out: int
    scales: dict[str, float]
    threshold: float


@lru_cache(maxsize=1)
def _opendp():
    """OpenDP, loaded on the first release rather than at import, so a process that never releases
    an aggregate (a plain `fedlake query`) does not pay for it.

    "contrib" unlocks OpenDP components whose proofs are written (each links its proof document) but
    have not finished OpenDP's external vetting; we use only make_laplace and make_laplace_threshold,
    pinned at opendp==0.16.0. "floating-point" is NOT enabled: it is not needed, as OpenDP samples
    float noise exactly (discrete Laplace on a fine grid). "honest-but-curious" is not enabled either.
    """
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


def _selection_space(max_rows: int):
    dp = _opendp()
    # Map {group label -> rows}; L01Inf distance d_in = (l0 groups, l1 rows in all, linf rows per group).
    space = (dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T="i64")), dp.l01inf_distance(dp.absolute_distance(T="i64")))
    return space, (max_rows, max_rows, max_rows)


@lru_cache(maxsize=256)
def _selection_params(max_rows: int, epsilon: float, delta: float) -> tuple[float, int]:
    """Smallest Laplace scale whose privacy map gives `epsilon`, then the smallest threshold whose
    map gives `delta` at that scale (both searched by OpenDP over its own maps)."""
    dp = _opendp()
    space, d_in = _selection_space(max_rows)
    scale = dp.binary_search(
        lambda s: dp.m.make_laplace_threshold(*space, scale=s, threshold=2**62).map(d_in)[0] <= epsilon,
        bounds=(1e-9, 1e15), T=float)
    threshold = dp.binary_search(
        lambda t: dp.m.make_laplace_threshold(*space, scale=scale, threshold=t).map(d_in)[1] <= delta,
        bounds=(max_rows, 2**31 - 1), T=int)
    return scale, threshold


def _vector_space(integer: bool):
    dp = _opendp()
    atom = dp.atom_domain(T="i64") if integer else dp.atom_domain(T=float, nan=False)
    return dp.vector_domain(atom), dp.l1_distance(T="i64" if integer else float)


@lru_cache(maxsize=256)
def _laplace_scale(integer: bool, d_in: float, epsilon: float) -> float:
    dp = _opendp()
    space = _vector_space(integer)
    return dp.binary_search_param(lambda s: dp.m.make_laplace(*space, scale=s), d_in=d_in, d_out=epsilon)


def _values(groups: pa.Table, column: str, kept: list[int], integer: bool) -> list:
    """The kept groups' values; NULL (SUM over no rows) counts as 0."""
    col = pc.fill_null(groups.column(column).cast(pa.int64() if integer else pa.float64()), 0)
    return col.take(pa.array(kept, pa.int64())).to_pylist()


def release(groups: pa.Table, keys: list[str], aggregates: list[Aggregate], max_rows: int,
            epsilon: float, delta: float) -> tuple[pa.Table, ReleaseReport]:
    """Release noisy aggregates per group; returns (key columns then outputs, report).

    Split: every noised quantity gets an equal share epsilon / n, where n counts partition selection
    (GROUP BY only) plus each distinct groups-table column that is noised (a SUM and an AVG of the
    same column share one noisy sum). All of delta goes to partition selection; without GROUP BY
    there is nothing to select, so the release is pure epsilon-DP and spends delta 0. The noisy
    counts that partition selection releases are reused as COUNT(*) (post-processing, no extra cost).
    Shares add up by basic composition. The inputs are trusted to be bounded by the agent's SQL
    (values clamped to [lo, hi], at most max_rows rows per subject); release clamps nothing itself.
    """
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be a whole number >= 1, got {max_rows!r}")
    if not epsilon > 0 or not 0 <= delta < 1:
        raise ValueError(f"need epsilon > 0 and delta in [0, 1), got {epsilon}, {delta}")
    measured: dict[str, tuple[bool, float]] = {}  # column -> (integer?, l1 sensitivity)

    def need(column: str, integer: bool, sensitivity: float) -> None:
        if column not in groups.column_names:
            raise ValueError(f"groups table has no column {column!r}")
        if column in measured and measured[column][0] != integer:
            raise ValueError(f"column {column!r} is used both as a count and as a sum")
        measured[column] = (integer, max(sensitivity, measured.get(column, (integer, 0.0))[1]))

    grouped = bool(keys)
    if grouped:
        need(ROWS, True, max_rows)
    for agg in aggregates:
        if agg.kind in ("count_rows", "count"):
            need(ROWS if agg.kind == "count_rows" else agg.input, True, max_rows)
        else:  # a subject's max_rows rows move the whole vector of sums by at most this much in l1
            need(agg.input, False, max_rows * max(abs(agg.lo), abs(agg.hi)))
            if agg.kind == "avg":
                need(agg.count_input, True, max_rows)
    if not measured:
        raise ValueError("nothing to release: no aggregates")
    dp = _opendp()
    share = epsilon / len(measured)
    spent_eps, spent_delta, scales, noisy, threshold = 0.0, 0.0, {}, {}, 0.0
    if grouped:
        if delta <= 0:
            raise ValueError("a GROUP BY release needs delta > 0 for partition selection")
        if any(k not in groups.column_names for k in keys):
            raise ValueError(f"groups table lacks a key column of {keys}")
        labels = [json.dumps(row, default=str) for row in zip(*(groups.column(k).to_pylist() for k in keys))]
        if len(set(labels)) != len(labels):
            raise ValueError("groups table holds the same group key twice")
        scale, threshold_i = _selection_params(max_rows, share, delta)
        space, d_in = _selection_space(max_rows)
        meas = dp.m.make_laplace_threshold(*space, scale=scale, threshold=threshold_i)
        eps_i, delta_i = meas.map(d_in)
        released = meas(dict(zip(labels, _values(groups, ROWS, list(range(len(labels))), True))))
        kept = [i for i, label in enumerate(labels) if label in released]
        noisy[ROWS] = [released[labels[i]] for i in kept]
        spent_eps, spent_delta, scales[ROWS], threshold = eps_i, delta_i, scale, float(threshold_i)
    else:
        if groups.num_rows != 1:
            raise ValueError(f"a query without GROUP BY has exactly one group, got {groups.num_rows}")
        kept = [0]

    for column, (integer, sensitivity) in measured.items():
        if column in noisy:
            continue
        scale = _laplace_scale(integer, sensitivity, share)
        meas = dp.m.make_laplace(*_vector_space(integer), scale=scale)
        spent_eps += meas.map(sensitivity)
        scales[column] = scale
        noisy[column] = meas(_values(groups, column, kept, integer))

    taken = pa.array(kept, pa.int64())
    names, columns = list(keys), [groups.column(k).take(taken) for k in keys]
    for agg in aggregates:
        names.append(agg.output)
        if agg.kind in ("count_rows", "count"):
            values = noisy[ROWS if agg.kind == "count_rows" else agg.input]
            columns.append(pa.array([max(0, round(v)) for v in values], pa.int64()))
        elif agg.kind == "sum":
            columns.append(pa.array(noisy[agg.input], pa.float64()))
        else:  # AVG is post-processing of a noisy sum and a noisy count, clamped to the declared bounds
            pairs = zip(noisy[agg.input], noisy[agg.count_input])
            columns.append(pa.array([min(agg.hi, max(agg.lo, s / max(c, 1))) for s, c in pairs], pa.float64()))
    out = pa.Table.from_arrays(columns, names=names)
    if spent_eps > epsilon * (1 + 1e-9) or spent_delta > delta:  # OpenDP's maps, summed, vs. what was granted
        raise RuntimeError(f"release would spend ({spent_eps}, {spent_delta}), more than ({epsilon}, {delta})")
    return out, ReleaseReport(spent_eps, spent_delta, groups.num_rows, len(kept), scales, threshold)
