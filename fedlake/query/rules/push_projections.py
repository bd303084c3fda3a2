"""Rule: every part of the query outputs only the columns something above it reads, so a fragment
ships only those. `SELECT *` in a derived table or a CTE is cut down to the columns used, and
`EXISTS (SELECT * ...)` selects a constant: whether a row exists needs none of its columns (a
column it never needed would otherwise cross, and be refused where the policy denies it)."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.pushdown_projections import pushdown_projections

from fedlake.query.rules.planning import Planning, PlanningError


def _needs_its_outputs(select: exp.Select) -> bool:
    """Whether an EXISTS subquery's rows depend on what it selects: an aggregate without GROUP BY
    makes one row whatever it reads; ORDER BY, QUALIFY, windows and DISTINCT ON read outputs; a
    name without a table in GROUP BY or HAVING may be an output's alias."""
    projections = select.expressions
    aggregates = any(p.find(exp.AggFunc) for p in projections)
    if aggregates and not select.args.get("group"):
        return True
    if any(p.find(exp.Window) for p in projections) or select.args.get("order") or select.args.get("qualify"):
        return True
    distinct = select.args.get("distinct")
    if distinct is not None and distinct.args.get("on"):
        return True
    clauses = [select.args.get("group"), select.args.get("having")]
    return any(not column.table for clause in clauses if clause is not None for column in clause.find_all(exp.Column))


def select_nothing_in_exists(tree: exp.Expression) -> None:
    for exists in list(tree.find_all(exp.Exists)):
        select = exists.this
        if isinstance(select, exp.Select) and not _needs_its_outputs(select):
            select.set("expressions", [exp.Literal.number(1)])


def push_projections(planning: Planning) -> Planning:
    select_nothing_in_exists(planning.tree)
    try:
        planning.tree = pushdown_projections(planning.tree)
    except OptimizeError as exc:
        raise PlanningError(f"cannot tell which columns the query uses: {exc}") from None
    return planning
