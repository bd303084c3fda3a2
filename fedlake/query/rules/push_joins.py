"""Rule: in a part of the query that mixes silos, the tables of one silo joined to each other by
conditions of their own (among the FROM table and the inner joins before any outer join) are joined
inside their silo, as one fragment with the conditions that touch only them; the group becomes one
source of the residual, its columns renamed `alias__column`."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, build_scope

from fedlake.query.rules.planning import Fragment, Planning, PlanningError
from fedlake.query.rules.sql import aliased_table, conjuncts, nests_query_or_aggregate, references_to, where_terms


def join_groups(scope: Scope, silos: set[str]) -> list[list[str]]:
    """Aliases of one silo joined to each other by conditions of their own, in the inner prefix of
    a SELECT's joins: each such group runs as one fragment and takes the place of its first table."""
    select = scope.expression
    if not isinstance(select, exp.Select) or not select.args.get("from_"):
        return []
    prefix = [select.args["from_"].this.alias_or_name]
    prefix_joins = []
    for join in select.args.get("joins") or []:
        if (join.side or "") or (join.kind or "").upper() not in ("", "INNER", "CROSS"):
            break
        prefix.append(join.this.alias_or_name)
        prefix_joins.append(join)
    tables = {a: t for a, t in scope.sources.items() if a in prefix and isinstance(t, exp.Table) and t.db in silos}
    conditions = where_terms(select)
    for join in prefix_joins:
        conditions += conjuncts(join.args.get("on"))
    links: dict[str, set[str]] = {a: set() for a in tables}
    for condition in conditions:
        if nests_query_or_aggregate(condition):
            continue
        aliases = {c.table for c in condition.find_all(exp.Column)}
        if len(aliases) >= 2 and aliases <= set(tables) and len({tables[a].db for a in aliases}) == 1:
            for a in aliases:
                links[a] |= aliases - {a}
    groups, seen = [], set()
    for alias in tables:
        if alias in seen or not links[alias]:
            continue
        component, todo = [], [alias]
        while todo:
            a = todo.pop()
            if a not in seen:
                seen.add(a)
                component.append(a)
                todo.extend(links[a])
        groups.append(sorted(component, key=list(tables).index))
    return groups


def push_join(planning: Planning, scope: Scope, group: list[str]) -> None:
    select = scope.expression
    tables = {a: scope.sources[a] for a in group}
    silo = tables[group[0]].db
    name = planning.next_name()
    members = set(group)

    conditions = where_terms(select)
    for join in select.args.get("joins") or []:
        if join.this.alias_or_name in members or not (join.side or ""):
            conditions += conjuncts(join.args.get("on"))
    inside = [
        c for c in conditions
        if {col.table for col in c.find_all(exp.Column)} <= members
        and c.find(exp.Column) is not None
        and not nests_query_or_aggregate(c)
    ]
    pushed = [c.copy() for c in inside]
    for condition in inside:
        condition.replace(exp.true())
    columns = references_to(scope, members, planning.attached)
    needed = sorted({(c.table, c.name) for c in columns})
    fragment = exp.select(
        *[exp.alias_(exp.column(col, table=alias, quoted=True), f"{alias}__{col}", quoted=True) for alias, col in needed]
        or [exp.alias_(exp.Literal.number(1), "__row", quoted=True)]
    ).from_(aliased_table(tables[group[0]].name, group[0]))
    for alias in group[1:]:
        fragment = fragment.join(aliased_table(tables[alias].name, alias), join_type="cross")
    for condition in pushed:
        fragment = fragment.where(condition)
    planning.fragments.append(
        Fragment(name, silo, fragment.sql("duckdb"), "join", tuple(tables[a].name for a in group), tuple(c.sql("duckdb") for c in pushed))
    )

    # the residual: the group's columns are renamed to the fragment's, the ON conditions of the
    # joins that disappear move to WHERE (all joins are inner), and the group becomes one source.
    for column in columns:
        column.set("this", exp.to_identifier(f"{column.table}__{column.name}", quoted=True))
        column.set("table", exp.to_identifier(name, quoted=True))
    for join in list(select.args.get("joins") or []):
        if join.this.alias_or_name in members:
            on = join.args.get("on")
            join.pop()
            if on is not None:
                join.set("on", None)
                select.where(on, copy=False)
    group_source = aliased_table(name, name)
    if select.args["from_"].this.alias_or_name in members:
        select.args["from_"].this.replace(group_source)
    else:
        select.join(group_source, join_type="cross", copy=False)


def push_joins(planning: Planning) -> Planning:
    root = build_scope(planning.tree)
    if root is None:
        raise PlanningError("cannot analyse the query's scopes")
    for scope in root.traverse():
        for group in join_groups(scope, planning.silos):
            push_join(planning, scope, group)
    return planning
