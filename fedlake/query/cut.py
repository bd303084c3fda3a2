"""Cutting a federated query into per-silo fragments and the residual query over them.

A query names tables as `silo.table`. Every part of it that touches one silo only and does not
depend on an outer query is pushed into that silo whole; what mixes silos stays above, in the
residual query, which reads each remaining table through a fragment that carries only the columns
the query uses and the filters that touch that table alone. The rewrites are the rules of
`fedlake.query.rules`, applied in order; this module parses the query and runs them.
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.errors import ParseError

from fedlake.query.rules import Cut, Fragment, Planning, PlanningError, apply_rules, conjuncts
from fedlake.query.statistics import Statistics
from fedlake.sql_text import parse_error_message, parse_sql

__all__ = ["Cut", "Fragment", "PlanningError", "conjuncts", "cut_query", "plan_query"]


def parse_query(sql: str) -> exp.Query:
    try:
        statements = parse_sql(sql)  # under limits: a query too large or too deep is refused in one line
    except ParseError as exc:
        raise PlanningError(f"cannot parse the query: {parse_error_message(exc)}") from None
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        raise PlanningError("a federated query is exactly one SELECT (with CTEs, subqueries and set operations)")
    return statements[0]


def plan_query(
    sql: str,
    schema: dict[str, dict[str, dict[str, str]]],
    silos: set[str] | None = None,
    raw: set[str] = frozenset(),
    statistics: Statistics | None = None,
    through: str | None = None,
) -> Planning:
    """The query after the rules, all of them or up to and including the rule named `through`."""
    planning = Planning(sql, parse_query(sql), schema, set(silos or schema), set(raw), statistics or {})
    return apply_rules(planning, through)


def cut_query(
    sql: str,
    schema: dict[str, dict[str, dict[str, str]]],
    silos: set[str] | None = None,
    raw: set[str] = frozenset(),
    statistics: Statistics | None = None,
) -> Cut:
    """Qualify `sql` against {silo: {table: {column: type}}} and cut it into fragments (those named
    in `raw` send their rows, not partial aggregates: fragment names are the same from cut to cut).
    `statistics`, {silo: {table: TableStatistics}}, decide where a partial aggregate pays."""
    planning = plan_query(sql, schema, silos, raw, statistics)
    leftover = [t.sql() for t in planning.tree.find_all(exp.Table) if t.db in planning.silos]
    if leftover:
        raise PlanningError(f"could not place {', '.join(leftover)} in any fragment")
    return planning.result()
