"""Column-level lineage of a query's output: which source columns each output value is made of,
and how (passed through, transformed, counted or aggregated).

The egress gate decides from this, not from output names: `SELECT national_id AS x` is still the
national id, `upper(email)` is still the e-mail, and a CTE, a derived table, a UNION branch or a
scalar subquery does not hide where a value came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, ParseError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope

from fedlake.errors import FedlakeError

# How an output value relates to a source column, from least to most revealing of that value.
COUNTED = "counted"  # only how many values there were (COUNT)
AGGREGATED = "aggregated"  # a sum or average over a group (SUM, AVG), checked against k
DIRECT = "direct"  # the value itself, perhaps renamed
DERIVED = "derived"  # a function of the value (CONCAT, CAST, MIN/MAX, window aggregates, ...)
_RANK = {COUNTED: 0, AGGREGATED: 1, DIRECT: 2, DERIVED: 3}
_GROUP_AGGREGATES = (exp.Sum, exp.Avg)


class LineageError(FedlakeError):
    """The fragment cannot be analysed (not a query, unknown table or column)."""


@dataclass(frozen=True)
class SourceUse:
    table: str
    column: str
    mode: str


@dataclass(frozen=True)
class OutputColumn:
    name: str
    uses: tuple[SourceUse, ...]

    def sources(self) -> set[tuple[str, str]]:
        return {(u.table, u.column) for u in self.uses}


@dataclass(frozen=True)
class QueryLineage:
    expression: exp.Expression  # the qualified query
    columns: tuple[OutputColumn, ...]
    aggregate: bool  # the top-level SELECT groups or aggregates its rows
    top_tables: dict[str, str]  # alias -> base table, for tables read directly by the top-level SELECT


def _worst(a: str, b: str) -> str:
    return a if _RANK[a] >= _RANK[b] else b


def parse_query(sql: str) -> exp.Expression:
    try:
        statements = sqlglot.parse(sql, read="duckdb")
    except ParseError as exc:
        raise LineageError(f"cannot parse the fragment: {exc}") from None
    if len(statements) != 1 or statements[0] is None:
        raise LineageError("a fragment is exactly one query")
    tree = statements[0]
    if not isinstance(tree, exp.Query):
        raise LineageError(f"only queries may run as fragments, not {tree.key.upper()}")
    return tree


def analyse(sql: str, schema: dict[str, dict[str, str]]) -> QueryLineage:
    """Qualify `sql` against `schema` ({table: {column: type}}) and trace every output column."""
    tree = name_outputs(parse_query(sql))
    try:
        tree = qualify(tree, schema=schema, dialect="duckdb", validate_qualify_columns=True, quote_identifiers=True)
    except (OptimizeError, KeyError) as exc:
        raise LineageError(f"fragment does not fit the silo's tables: {exc}") from None
    return trace(tree)


def trace(tree: exp.Expression) -> QueryLineage:
    """Trace every output column of a query already qualified against its tables."""
    root = build_scope(tree)
    if root is None:
        raise LineageError("cannot build the fragment's scopes")
    top = _branches(root)[0]
    columns = tuple(
        OutputColumn(name=projection.alias_or_name, uses=tuple(_trace_output(root, i, top=True)))
        for i, projection in enumerate(top.expression.selects)
    )
    tables = {alias: source.name for alias, source in top.sources.items() if isinstance(source, exp.Table)}
    return QueryLineage(tree, columns, _is_aggregate(top.expression), tables)


def name_outputs(tree: exp.Expression) -> exp.Expression:
    """Give every unnamed output expression the name DuckDB would show (its SQL text), so that the
    names the gate decides on are the names that leave, whichever engine runs the fragment."""
    first = tree
    while isinstance(first, exp.SetOperation):
        first = first.this
    if isinstance(first, exp.Select):
        first.set(
            "expressions",
            [
                p if isinstance(p, (exp.Alias, exp.Column, exp.Star)) else exp.alias_(p, p.sql("duckdb"), quoted=True)
                for p in first.expressions
            ],
        )
    return tree


def _branches(scope: Scope) -> list[Scope]:
    """The SELECT scopes that produce a scope's rows (both sides of a UNION, recursively)."""
    if scope.set_operation_scopes:
        return [b for child in scope.set_operation_scopes for b in _branches(child)]
    return [scope]


def _is_aggregate(select: exp.Expression) -> bool:
    if not isinstance(select, exp.Select):
        return False
    if select.args.get("group"):
        return True
    return any(
        isinstance(node, exp.AggFunc)
        and not isinstance(node.parent, exp.Window)
        and not _inside_subquery(node, projection)
        for projection in select.selects
        for node in projection.walk()
    )


def _trace_output(scope: Scope, index: int, top: bool) -> list[SourceUse]:
    uses: list[SourceUse] = []
    for branch in _branches(scope):
        selects = branch.expression.selects
        if index < len(selects):
            uses.extend(_trace_expression(branch, selects[index], top))
    return uses


def _mode_of(column: exp.Column, projection: exp.Expression, top: bool) -> str:
    """How the projection uses one column reference, judged on the path from the column up."""
    node = column
    mode = DIRECT
    while node is not projection and node.parent is not None:
        parent = node.parent
        if isinstance(parent, exp.Alias):
            pass
        elif isinstance(parent, exp.AggFunc):
            windowed = isinstance(parent.parent, exp.Window)
            if isinstance(parent, exp.Count) and not windowed:
                return COUNTED if top else DERIVED
            if isinstance(parent, _GROUP_AGGREGATES) and not windowed and top:
                return AGGREGATED
            mode = DERIVED
        elif isinstance(parent, exp.Distinct) and isinstance(parent.parent, exp.Count):
            pass
        else:
            mode = DERIVED
        node = parent
    return mode


def _trace_expression(scope: Scope, projection: exp.Expression, top: bool) -> list[SourceUse]:
    uses: list[SourceUse] = []
    for node in projection.walk():
        if isinstance(node, exp.Column):
            if _inside_subquery(node, projection):
                continue
            uses.extend(_resolve(scope, node, _mode_of(node, projection, top)))
        elif isinstance(node, exp.Subquery) or (isinstance(node, exp.Select) and node is not projection):
            select = node.this if isinstance(node, exp.Subquery) else node
            child = next((s for s in scope.subquery_scopes if s.expression is select), None)
            if child is not None and not _inside_subquery(node, projection):
                uses.extend(SourceUse(u.table, u.column, _worst(u.mode, DERIVED)) for u in _trace_output(child, 0, top=False))
    return uses


def _inside_subquery(node: exp.Expression, projection: exp.Expression) -> bool:
    """Whether `node` sits inside a subquery of the projection (traced through that subquery's scope)."""
    parent = node.parent
    while parent is not None and parent is not projection:
        if isinstance(parent, (exp.Subquery, exp.Select)):
            return True
        parent = parent.parent
    return False


def _resolve(scope: Scope, column: exp.Column, mode: str) -> list[SourceUse]:
    source = scope.sources.get(column.table)
    if isinstance(source, exp.Table):
        return [SourceUse(source.name, column.name, mode)]
    if isinstance(source, Scope):
        selects = _branches(source)[0].expression.selects
        names = [s.alias_or_name for s in selects]
        if column.name not in names:
            raise LineageError(f"column {column.sql()} not found in its derived table")
        inner = _trace_output(source, names.index(column.name), top=False)
        return [SourceUse(u.table, u.column, combine(u.mode, mode)) for u in inner]
    if scope.parent is not None:  # a correlated reference to an outer query
        return _resolve(scope.parent, column, _worst(mode, DERIVED))
    raise LineageError(f"cannot trace column {column.sql()}")


def combine(inner: str, outer: str) -> str:
    """A value that was already transformed inside stays transformed; an outer COUNT or SUM still
    reduces it to an aggregate over the outer group."""
    if outer in (COUNTED, AGGREGATED):
        return outer
    if inner in (COUNTED, AGGREGATED):
        return DERIVED
    return _worst(inner, outer)
