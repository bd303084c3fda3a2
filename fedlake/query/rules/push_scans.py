"""Rule: every silo table still read by the residual is read through a fragment that carries only
the columns the query uses and the filters that touch that table alone: from WHERE, and from join
conditions where outer-join semantics allow. A filter moved into the silo runs on the raw values
there (the residual may only see pseudonyms of them) and becomes TRUE where it stood."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, build_scope

from fedlake.query.rules.planning import Fragment, Planning, PlanningError
from fedlake.query.rules.sql import aliased_table, conjuncts, nests_query_or_aggregate, null_supplying, references_to


def local_filters(select: exp.Select, alias: str) -> list[exp.Expression]:
    """The conditions on `alias` alone that may be applied before the joins of `select`."""
    padded = null_supplying(select)
    candidates: list[exp.Expression] = []
    where = select.args.get("where")
    if where is not None and alias not in padded:
        candidates += conjuncts(where.this)
    for join in select.args.get("joins") or []:
        side = (join.side or "").upper()
        on = join.args.get("on")
        if on is None:
            continue
        if side == "" and alias not in padded:
            candidates += conjuncts(on)
        elif side == "LEFT" and join.this.alias_or_name == alias:
            candidates += conjuncts(on)

    def local(condition: exp.Expression) -> bool:
        columns = list(condition.find_all(exp.Column))
        return bool(columns) and all(c.table == alias for c in columns) and not nests_query_or_aggregate(condition)

    return [c for c in candidates if local(c)]


def push_scan(planning: Planning, scope: Scope, alias: str, table: exp.Table) -> None:
    select = scope.expression
    filters = local_filters(select, alias) if isinstance(select, exp.Select) else []
    pushed = [f.copy() for f in filters]
    for condition in filters:
        condition.replace(exp.true())
    columns = sorted({c.name for c in references_to(scope, {alias}, planning.attached)})
    projection = [exp.alias_(exp.column(c, table=alias, quoted=True), c, quoted=True) for c in columns] or [
        exp.alias_(exp.Literal.number(1), "__row", quoted=True)
    ]
    query = exp.select(*projection).from_(aliased_table(table.name, alias))
    for condition in pushed:
        query = query.where(condition)
    name = planning.next_name()
    planning.fragments.append(
        Fragment(name, table.db, query.sql("duckdb"), "scan", (table.name,), tuple(f.sql("duckdb") for f in pushed))
    )
    table.replace(aliased_table(name, alias))


def push_scans(planning: Planning) -> Planning:
    root = build_scope(planning.tree)
    if root is None:
        raise PlanningError("cannot analyse the query's scopes")
    for scope in root.traverse():
        for alias, source in list(scope.sources.items()):
            if isinstance(source, exp.Table) and source.db in planning.silos and planning.attached(source):
                push_scan(planning, scope, alias, source)
    return planning
