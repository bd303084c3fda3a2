"""Differentially private aggregates (fedlake.policy.dp), with real OpenDP: the noise has the
scale the report states, rare groups stay hidden, contribution bounds drive the scales, the epsilon
spent is the one configured, and a malformed `dp:` section is refused naming its key."""

from __future__ import annotations

import copy
import math
import statistics
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from fedlake.errors import ConfigError
from fedlake.policy.dp import ROWS, Aggregate, parse_dp, release

DP = {
    "epsilon": 1.0,
    "delta": 1.0e-6,
    "budget": {"epsilon": 10.0, "delta": 1.0e-5, "period": "day"},
    "max_rows_per_subject": 5,
    "bounds": {"*.customers.income": [0, 300000], "*.transactions.amount": [0, 20000]},
}
AMOUNT = (0.0, 20000.0)


def groups(rows: dict[str, int], mean: float = 100.0) -> pa.Table:
    """A groups table as the agent's SQL makes it: key, bounded row count, clamped sum."""
    return pa.table({
        "country": list(rows),
        ROWS: pa.array(list(rows.values()), pa.int64()),
        "sum_amount": pa.array([n * mean for n in rows.values()], pa.float64()),
    })


def test_noise_std_matches_reported_scale():
    table = groups({"DE": 1000})
    aggs = [Aggregate("n", "count_rows"), Aggregate("total", "sum", "sum_amount", *AMOUNT)]
    counts, sums = [], []
    for _ in range(1500):
        out, report = release(table, ["country"], aggs, max_rows=5, epsilon=1.0, delta=1e-6)
        counts.append(out["n"][0].as_py())
        sums.append(out["total"][0].as_py())
    for values, column in ((counts, ROWS), (sums, "sum_amount")):
        expected = report.scales[column] * math.sqrt(2)
        assert abs(statistics.pstdev(values) - expected) <= 0.15 * expected, column
    assert abs(statistics.mean(sums) - 100_000.0) < 0.1 * report.scales["sum_amount"]  # unbiased


def test_rare_group_is_almost_never_released_and_a_large_one_always():
    table = groups({"one_subject": 1, "crowd": 1000})
    seen = {"one_subject": 0, "crowd": 0}
    for _ in range(200):
        out, report = release(table, ["country"], [Aggregate("n", "count_rows")], 5, 1.0, 1e-6)
        for key in out["country"].to_pylist():
            seen[key] += 1
    assert seen == {"one_subject": 0, "crowd": 200}
    assert report.groups_in == 2 and report.groups_out == 1
    assert report.threshold > 5  # above what one subject (max_rows rows) can reach on its own


def test_doubling_max_rows_doubles_the_sum_and_count_scales():
    table = groups({"DE": 1000})
    aggs = [Aggregate("total", "sum", "sum_amount", *AMOUNT)]
    _, r5 = release(table, ["country"], aggs, 5, 1.0, 1e-6)
    _, r10 = release(table, ["country"], aggs, 10, 1.0, 1e-6)
    assert r10.scales["sum_amount"] == pytest.approx(2 * r5.scales["sum_amount"], rel=1e-9)
    assert r10.scales[ROWS] == pytest.approx(2 * r5.scales[ROWS], rel=1e-9)
    # sum sensitivity is max_rows * max(|lo|, |hi|); a negative bound counts by magnitude
    _, wide = release(table, ["country"], [Aggregate("total", "sum", "sum_amount", -40000.0, 10.0)], 5, 1.0, 1e-6)
    assert wide.scales["sum_amount"] == pytest.approx(2 * r5.scales["sum_amount"], rel=1e-9)


def test_avg_stays_within_bounds():
    """Clamping happens in the agent's SQL (the sums arrive already clamped to [lo, hi]); release
    trusts that and never sees raw values. What it guarantees is that a released AVG, a noisy sum
    over a noisy count, is clamped back into [lo, hi] even for small, very noisy groups."""
    small = pa.table({ROWS: pa.array([3], pa.int64()), "sum_amount": [3 * 19_900.0]})  # near hi
    aggs = [Aggregate("avg_amount", "avg", "sum_amount", *AMOUNT)]
    values = []
    for _ in range(100):
        out, _ = release(small, [], aggs, 5, 1.0, 0.0)
        values += out["avg_amount"].to_pylist()
    assert all(AMOUNT[0] <= v <= AMOUNT[1] for v in values)
    assert max(values) == AMOUNT[1] or min(values) == AMOUNT[0]  # the clamp did work


def test_epsilon_and_delta_spent_are_the_configured_ones():
    settings = parse_dp(DP, "policies.yaml")
    table = groups({"DE": 1000, "FR": 800})
    table = table.append_column("nonnull_amount", pa.array([990, 800], pa.int64()))
    aggs = [
        Aggregate("n", "count_rows"),
        Aggregate("total", "sum", "sum_amount", *AMOUNT),
        Aggregate("avg_amount", "avg", "sum_amount", *AMOUNT, count_input="nonnull_amount"),
        Aggregate("n_amount", "count", "nonnull_amount"),
    ]
    out, report = release(table, ["country"], aggs, settings.max_rows, settings.epsilon, settings.delta)
    assert report.epsilon == pytest.approx(settings.epsilon, rel=1e-9) and report.epsilon <= settings.epsilon
    assert 0 < report.delta <= settings.delta
    # three noised columns (rows via selection, sum_amount shared by SUM and AVG, nonnull_amount)
    assert set(report.scales) == {ROWS, "sum_amount", "nonnull_amount"}
    assert out.column_names == ["country", "n", "total", "avg_amount", "n_amount"]
    assert [str(t) for t in out.schema.types] == ["string", "int64", "double", "double", "int64"]
    assert all(v >= 0 for v in out["n"].to_pylist() + out["n_amount"].to_pylist())


def test_query_without_group_by_is_released_without_threshold_but_with_noise():
    one = pa.table({ROWS: pa.array([1], pa.int64()), "sum_amount": [150.0]})
    aggs = [Aggregate("n", "count_rows"), Aggregate("total", "sum", "sum_amount", *AMOUNT)]
    totals = set()
    for _ in range(20):
        out, report = release(one, [], aggs, 5, 1.0, 1e-6)
        assert out.num_rows == 1 and out.column_names == ["n", "total"]
        totals.add(out["total"][0].as_py())
    assert report.threshold == 0.0 and report.delta == 0.0 and report.groups_out == 1
    assert report.epsilon == pytest.approx(1.0, rel=1e-9)
    assert len(totals) == 20 and 150.0 not in totals


def test_grouped_release_refuses_zero_delta_and_unknown_columns():
    table = groups({"DE": 1000})
    with pytest.raises(ValueError, match="delta > 0"):
        release(table, ["country"], [Aggregate("n", "count_rows")], 5, 1.0, 0.0)
    with pytest.raises(ValueError, match="no column 'missing'"):
        release(table, ["country"], [Aggregate("t", "sum", "missing", *AMOUNT)], 5, 1.0, 1e-6)


def test_parse_dp_reads_the_section():
    s = parse_dp(DP, "policies.yaml")
    assert (s.epsilon, s.delta, s.budget_epsilon, s.budget_delta, s.period, s.max_rows) == (1.0, 1e-6, 10.0, 1e-5, "day", 5)
    assert s.bounds_for("us_lake", "customers", "income") == (0.0, 300000.0)
    assert s.bounds_for("us_lake", "customers", "age") is None
    assert parse_dp(None, "policies.yaml") is None
    specific = parse_dp({**DP, "bounds": {"*.t.c": [0, 1], "us.t.c": [0, 2], "*.*.c": [0, 3]}}, "p.yaml")
    assert specific.bounds_for("us", "t", "c") == (0, 2) and specific.bounds_for("eu", "t", "c") == (0, 1)
    assert specific.bounds_for("eu", "u", "c") == (0, 3)


def test_period_start_is_utc_day_iso_week_and_month():
    now = datetime(2026, 12, 3, 23, 30, tzinfo=timezone(timedelta(hours=-2)))  # Friday 01:30 UTC
    starts = {p: parse_dp({**DP, "budget": {**DP["budget"], "period": p}}, "p").period_start(now) for p in ("day", "week", "month")}
    assert starts == {
        "day": datetime(2026, 12, 4, tzinfo=timezone.utc),
        "week": datetime(2026, 11, 30, tzinfo=timezone.utc),
        "month": datetime(2026, 12, 1, tzinfo=timezone.utc),
    }


def _set(path: list[str], value):
    raw = copy.deepcopy(DP)
    node = raw
    for name in path[:-1]:
        node = node[name]
    node[path[-1]] = value
    return raw


@pytest.mark.parametrize("raw, key", [
    (_set(["epsilon"], 0), "dp.epsilon"),
    (_set(["epsilon"], -1.0), "dp.epsilon"),
    (_set(["epsilon"], "1e-6"), "dp.epsilon"),
    (_set(["delta"], 1.0), "dp.delta"),
    (_set(["delta"], -1e-9), "dp.delta"),
    (_set(["budget", "period"], "year"), "dp.budget.period"),
    (_set(["budget", "epsilon"], 0.5), "dp.budget.epsilon"),
    (_set(["budget", "delta"], True), "dp.budget.delta"),
    (_set(["budget", "window"], "day"), "dp.budget.window"),
    (_set(["max_rows_per_subject"], 0), "dp.max_rows_per_subject"),
    (_set(["bounds", "*.customers.income"], [300000, 0]), "dp.bounds.*.customers.income"),
    (_set(["bounds", "*.customers.income"], [5, 5]), "dp.bounds.*.customers.income"),
    (_set(["bounds", "*.customers.income"], [0]), "dp.bounds.*.customers.income"),
    (_set(["bounds", "customers.income"], [0, 1]), "dp.bounds.customers.income"),
    (_set(["epsilom"], 1.0), "dp.epsilom"),
    ({k: v for k, v in DP.items() if k != "budget"}, "dp.budget"),
    ([1, 2], "dp"),
])
def test_parse_dp_names_the_malformed_key(raw, key):
    with pytest.raises(ConfigError) as err:
        parse_dp(raw, "policies.yaml")
    assert err.value.path == "policies.yaml" and err.value.key == key
