"""Aggregate-only columns leave only through differential privacy, in one query shape the agent can
bound: a single SELECT over the silo's masked relations (joins and filters on other columns are
fine) whose projections are GROUP BY keys and COUNT(*), COUNT(col), SUM(col), AVG(col), where an
aggregate-only column appears only as the direct argument of SUM, AVG or COUNT (a numeric CAST of it
is allowed). No HAVING, ORDER BY, LIMIT, DISTINCT, windows or set operations: ordering and
filtering of the released groups are post-processing, for the caller to do.

Inside the silo, every row keeps its data subject (the raw subject column of the table the
aggregate-only columns come from); each subject keeps at most `max_rows_per_subject` rows, chosen at
random; SUM and AVG inputs are clamped to the bounds policies.yaml declares. The silo then sends
nothing but per-group counts and clamped sums to fedlake.policy.dp.release, which selects groups
over a noisy threshold and adds noise calibrated by OpenDP.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from sqlglot import exp

from fedlake.agent.masks import SUBJECT, BoundQuery, TableMask
from fedlake.agent.subset import RESERVED_PREFIX, Refused
from fedlake.policy.dp import Aggregate, DPSettings

ROWS = f"{RESERVED_PREFIX}_rows"
_NUMERIC = {getattr(exp.DataType.Type, name) for name in ("INT", "BIGINT", "DOUBLE", "FLOAT", "DECIMAL", "SMALLINT", "TINYINT", "INT128")}


class DPRefused(Refused):
    """An aggregate-only column used where its release cannot be bounded."""


@dataclass
class DPQuery:
    """The bounded, per-group aggregation that runs in the silo, and how to release its result."""

    sql: str
    params: dict[str, bytes]
    keys: list[str]  # output names of the group keys
    aggregates: list[Aggregate]
    settings: DPSettings
    mask: TableMask  # the table whose subjects are bounded

    def output_schema(self, keys: pa.Schema) -> pa.Schema:
        fields = [keys.field(name) for name in self.keys]
        for aggregate in self.aggregates:
            fields.append(pa.field(aggregate.output, pa.int64() if aggregate.kind in ("count", "count_rows") else pa.float64()))
        return pa.schema(fields)


def _refuse(column: exp.Column, mask: TableMask, why: str) -> DPRefused:
    rule = mask.columns[column.name].rule
    return DPRefused(f"{mask.silo}.{mask.table}.{column.name} may leave only through differentially private "
                     f"COUNT, SUM or AVG: {why} [rule {rule}]")


def _aggregate_of(column: exp.Column) -> exp.AggFunc | None:
    """The COUNT / SUM / AVG a column is the direct argument of (through one numeric CAST)."""
    node = column.parent
    if isinstance(node, (exp.Cast, exp.TryCast)) and node.args["to"].this in _NUMERIC:
        node = node.parent
    return node if isinstance(node, (exp.Sum, exp.Avg, exp.Count)) else None


def plan_dp(bound: BoundQuery, settings: DPSettings | None, master: bytes, purpose: str) -> DPQuery:
    tree = bound.tree
    first_column, first_mask = bound.aggregate_refs[0]
    if settings is None:
        raise _refuse(first_column, first_mask, "the policy declares no `dp` section")
    aliases = {column.table for column, _ in bound.aggregate_refs}
    if len(aliases) != 1:
        raise _refuse(first_column, first_mask, "aggregate-only columns of one query must come from one table")
    if not isinstance(tree, exp.Select):
        raise _refuse(first_column, first_mask, "set operations are not bounded")
    for column, mask in bound.aggregate_refs:
        aggregate = _aggregate_of(column)
        if aggregate is None or column.find_ancestor(exp.Select) is not tree:
            raise _refuse(column, mask, f"it appears in {_context(column)}")
        if isinstance(aggregate.parent, exp.Window) or aggregate.find_ancestor(exp.Select) is not tree or not _projected(aggregate, tree):
            raise _refuse(column, mask, "only in the top-level SELECT list, not in a window, HAVING or ORDER BY")
    for clause in ("having", "order", "limit", "offset", "qualify", "distinct"):
        if tree.args.get(clause):
            raise _refuse(first_column, first_mask, f"{clause.upper()} is not bounded (apply it to the released result)")
    if first_mask.subject is None:
        raise _refuse(first_column, first_mask, f"{first_mask.table} declares no subject column (policies.yaml: subjects)")

    group = [g for g in (tree.args.get("group").expressions if tree.args.get("group") else [])]
    if any(isinstance(g, (exp.Rollup, exp.Cube, exp.GroupingSets)) for g in group):
        raise _refuse(first_column, first_mask, "ROLLUP, CUBE and GROUPING SETS are not bounded (group the released result)")
    group_sql = [g.sql("duckdb") for g in group]
    inner, keys, aggregates, outputs = [], [], [], []
    for i, expression in enumerate(group):
        inner.append(exp.alias_(expression.copy(), f"{RESERVED_PREFIX}_g{i}", quoted=True))
    for projection in tree.expressions:
        value = projection.this if isinstance(projection, exp.Alias) else projection
        name = projection.alias_or_name
        if value.sql("duckdb") in group_sql:
            index = group_sql.index(value.sql("duckdb"))
            keys.append(name)
            outputs.append(exp.alias_(exp.column(f"{RESERVED_PREFIX}_g{index}", quoted=True), name, quoted=True))
            continue
        aggregates.append(_aggregate(value, name, len(aggregates), first_mask, settings, inner, outputs))
    alias = next(iter(aliases))
    inner.append(exp.alias_(exp.column(SUBJECT, table=alias, quoted=True), SUBJECT, quoted=True))
    rows = tree.copy()
    rows.set("expressions", inner)
    rows.set("group", None)
    rows.set("with_", None)
    numbered = exp.select(exp.Star(), exp.alias_(
        exp.Window(this=exp.RowNumber(), partition_by=[exp.column(SUBJECT, quoted=True)],
                   order=exp.Order(expressions=[exp.Ordered(this=exp.Rand())])), f"{RESERVED_PREFIX}_rn", quoted=True,
    )).from_(exp.Subquery(this=rows, alias=exp.TableAlias(this=exp.to_identifier(f"{RESERVED_PREFIX}_r"))))
    bounded = exp.select(*outputs, exp.alias_(exp.Count(this=exp.Star()), ROWS, quoted=True)).from_(
        exp.Subquery(this=numbered, alias=exp.TableAlias(this=exp.to_identifier(f"{RESERVED_PREFIX}_b")))
    ).where(exp.LTE(this=exp.column(f"{RESERVED_PREFIX}_rn", quoted=True), expression=exp.Literal.number(settings.max_rows)))
    if group:
        bounded = bounded.group_by(*[exp.column(f"{RESERVED_PREFIX}_g{i}", quoted=True) for i in range(len(group))])
    with_ = tree.args.get("with_")
    if with_ is not None:
        bounded.set("with_", with_.copy())
    sql, params = bound.sql(master, purpose, subject_tables={first_mask.table}, tree=bounded)
    return DPQuery(sql, params, keys, aggregates, settings, first_mask)


def _aggregate(value: exp.Expression, name: str, index: int, mask: TableMask, settings: DPSettings,
               inner: list[exp.Expression], outputs: list[exp.Expression]) -> Aggregate:
    """One released aggregate: its input computed per row (clamped) and combined per group."""
    column_name = f"{RESERVED_PREFIX}_a{index}"
    reference = exp.column(column_name, quoted=True)
    if isinstance(value, exp.Count) and isinstance(value.this, exp.Star):
        return Aggregate(name, "count_rows", ROWS, 0.0, 1.0)
    if isinstance(value, exp.Count) and not isinstance(value.this, exp.Distinct):
        inner.append(exp.alias_(value.this.copy(), column_name, quoted=True))
        outputs.append(exp.alias_(exp.Count(this=reference), column_name, quoted=True))
        return Aggregate(name, "count", column_name, 0.0, 1.0)
    argument = value.this if isinstance(value, (exp.Sum, exp.Avg)) else None
    column = argument.this if isinstance(argument, (exp.Cast, exp.TryCast)) else argument
    if not isinstance(column, exp.Column):
        raise DPRefused(f"in a query over aggregate-only columns of {mask.silo}.{mask.table}, '{name}' must be "
                        "COUNT(*), COUNT(column), SUM(column) or AVG(column)")
    bounds = settings.bounds_for(mask.silo, mask.table, column.name)
    if bounds is None:
        raise DPRefused(f"SUM and AVG of {mask.silo}.{mask.table}.{column.name} need bounds: declare "
                        f"'{mask.silo}.{mask.table}.{column.name}' (or a * pattern) under dp.bounds in policies.yaml")
    lo, hi = bounds
    number = exp.Cast(this=argument.copy(), to=exp.DataType.build("DOUBLE"))
    clamped = exp.func("least", exp.func("greatest", number, exp.Literal.number(lo)), exp.Literal.number(hi))
    # LEAST and GREATEST skip NULLs in DuckDB, so a missing value stays missing explicitly
    kept = exp.Case(ifs=[exp.If(this=exp.Is(this=argument.copy(), expression=exp.Null()), true=exp.Null())], default=clamped)
    inner.append(exp.alias_(kept, column_name, quoted=True))
    outputs.append(exp.alias_(exp.Sum(this=reference), column_name, quoted=True))
    if isinstance(value, exp.Avg):
        outputs.append(exp.alias_(exp.Count(this=reference.copy()), f"{column_name}_n", quoted=True))
        return Aggregate(name, "avg", column_name, float(lo), float(hi), count_input=f"{column_name}_n")
    return Aggregate(name, "sum", column_name, float(lo), float(hi))


def _projected(aggregate: exp.Expression, tree: exp.Select) -> bool:
    node = aggregate
    while node.parent is not tree:
        if not isinstance(node.parent, exp.Alias):
            return False
        node = node.parent
    return node in tree.expressions


def _context(column: exp.Column) -> str:
    for clause in (exp.Where, exp.Join, exp.Group, exp.Having, exp.Order, exp.Window, exp.Case, exp.Filter):
        if column.find_ancestor(clause) is not None:
            return {exp.Join: "a JOIN condition", exp.Case: "a CASE expression", exp.Filter: "a FILTER clause"}.get(
                clause, f"{clause.key.upper()}")
    if column.find_ancestor(exp.Select) is not None and column.find_ancestor(exp.Subquery) is not None:
        return "a subquery"
    return "an expression that is not COUNT, SUM or AVG of it"
