"""How the geo-split TPC-DS bench turns a standard query into a federated one, and how it decides that
a federated answer is the co-located one: the same multiset of rows, numbers equal to a tolerance,
the order checked on the ORDER BY keys the query outputs, and ties at a LIMIT allowed for."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from dataclasses import dataclass

import pyarrow as pa
import sqlglot
from sqlglot import exp

REL_TOLERANCE = 1e-6
ABS_TOLERANCE = 1e-6


def qualify_tables(sql: str, silo_of: dict[str, str]) -> str:
    """The query with every base table named `silo.table` (sqlglot, DuckDB dialect), nothing else
    changed; CTE names stay as they are. A table that is in no silo is an error naming it."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        if table.db or table.name in ctes:
            continue
        if table.name not in silo_of:
            raise ValueError(f"table '{table.name}' is in no silo of the split")
        table.set("db", exp.to_identifier(silo_of[table.name]))
    return tree.sql(dialect="duckdb")


@dataclass(frozen=True)
class OrderSpec:
    """The outermost ORDER BY as positions in the output (None: a key the output lacks) and whether
    a LIMIT cuts the ordered rows."""

    keys: tuple[int, ...] | None
    limited: bool


def order_spec(sql: str, columns: list[str]) -> OrderSpec | None:
    """None where the outermost query does not order its rows."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    order = tree.args.get("order")
    if order is None:
        return None
    limited = tree.args.get("limit") is not None
    keys = []
    for item in order.expressions:
        key = item.this
        if isinstance(key, exp.Literal) and key.is_int:
            keys.append(int(key.this) - 1)
        elif isinstance(key, exp.Column) and columns.count(key.name) == 1:
            keys.append(columns.index(key.name))
        else:
            return OrderSpec(None, limited)
    return OrderSpec(tuple(keys), limited)


def _cell(value):
    """A comparable form: every number a float, dates and times as text, NULL as None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float, decimal.Decimal)):
        return float(value)
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return value


def _rows(table: pa.Table) -> list[tuple]:
    return [tuple(_cell(v) for v in row) for row in zip(*(c.to_pylist() for c in table.columns))] if table.num_columns else []


def _sort_key(row: tuple) -> tuple:
    """Floats rounded for sorting only, so that rows equal to the tolerance line up."""
    return tuple(
        (0, "") if v is None else (1, f"{v:.6g}") if isinstance(v, float) else (2, str(v)) for v in row
    )


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=REL_TOLERANCE, abs_tol=ABS_TOLERANCE) or (math.isnan(a) and math.isnan(b))
    return a == b


def _same_rows(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))


def _first_difference(expected: list[tuple], got: list[tuple]) -> str | None:
    """None where the two are the same multiset; else the first pair that differs, briefly."""
    if len(expected) != len(got):
        return f"{len(got)} rows, expected {len(expected)}"
    for e, g in zip(sorted(expected, key=_sort_key), sorted(got, key=_sort_key)):
        if not _same_rows(e, g):
            return f"row {g!r:.200} where expected {e!r:.200}"
    return None


def _split_at(rows: list[tuple], keys: tuple[int, ...], boundary: tuple) -> tuple[list[tuple], list[tuple]]:
    """The rows whose ORDER BY keys equal `boundary`, and the others."""
    tied = [r for r in rows if _same_rows(tuple(r[i] for i in keys), boundary)]
    rest = [r for r in rows if not _same_rows(tuple(r[i] for i in keys), boundary)]
    return tied, rest


@dataclass(frozen=True)
class Verdict:
    correct: bool
    detail: str  # how it was checked, or what differs


def compare(sql: str, expected: pa.Table, got: pa.Table) -> Verdict:
    """Whether `got` answers `sql` as `expected` (the co-located answer) does."""
    if got.num_columns != expected.num_columns:
        return Verdict(False, f"{got.num_columns} columns, expected {expected.num_columns}")
    renamed = [f"{g!r} for {e!r}" for g, e in zip(got.column_names, expected.column_names) if g != e]
    verdict = _compare_rows(sql, expected, got)
    if renamed and verdict.correct:  # unaliased expressions named as another printer prints them
        return Verdict(True, f"{verdict.detail}; columns named differently: {', '.join(renamed)}")
    return verdict


def _compare_rows(sql: str, expected: pa.Table, got: pa.Table) -> Verdict:
    want, have = _rows(expected), _rows(got)
    spec = order_spec(sql, expected.column_names)
    difference = _first_difference(want, have)
    how = "multiset"
    if difference is not None and spec is not None and spec.keys is not None and spec.limited and want:
        # a LIMIT may cut through rows tied on every ORDER BY key: any of them is a right answer
        boundary = tuple(want[-1][i] for i in spec.keys)
        want_tied, want_rest = _split_at(want, spec.keys, boundary)
        have_tied, have_rest = _split_at(have, spec.keys, boundary)
        if len(have) == len(want) and len(have_tied) == len(want_tied) and _first_difference(want_rest, have_rest) is None:
            difference, how = None, "multiset, ties at the LIMIT"
    if difference is not None:
        return Verdict(False, difference)
    if spec is None:
        return Verdict(True, how)
    if spec.keys is None:
        return Verdict(True, how + "; order not checked (an ORDER BY key is not in the output)")
    want_keys = [tuple(r[i] for i in spec.keys) for r in want]
    have_keys = [tuple(r[i] for i in spec.keys) for r in have]
    if not all(_same_rows(a, b) for a, b in zip(want_keys, have_keys)):
        return Verdict(False, "rows out of the ORDER BY order")
    return Verdict(True, how + " and order")
