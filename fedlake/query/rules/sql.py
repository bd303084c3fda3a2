"""Small facts about a qualified query tree that several rules need."""

from __future__ import annotations

from collections.abc import Iterator

from sqlglot import exp
from sqlglot.optimizer.scope import Scope


def conjuncts(condition: exp.Expression | None) -> list[exp.Expression]:
    """The terms of a conjunction, through nested ANDs and parentheses (the nodes themselves, so
    that a term moved into a silo can be replaced where it stands)."""
    if condition is None:
        return []
    if isinstance(condition, exp.Paren):
        return conjuncts(condition.this)
    if isinstance(condition, exp.And):
        return conjuncts(condition.left) + conjuncts(condition.right)
    return [condition]


def where_terms(select: exp.Select) -> list[exp.Expression]:
    where = select.args.get("where")
    return conjuncts(where.this if where is not None else None)


def own_nodes(select: exp.Select) -> Iterator[exp.Expression]:
    """The nodes of a SELECT itself, not of the queries nested in it."""
    todo = list(select.iter_expressions())
    while todo:
        node = todo.pop()
        if isinstance(node, (exp.Subquery, exp.Query)):
            continue
        yield node
        todo.extend(node.iter_expressions())


def nests_query_or_aggregate(condition: exp.Expression) -> bool:
    return any(isinstance(n, (exp.Subquery, exp.Select, exp.AggFunc)) for n in condition.walk())


def null_supplying(select: exp.Select) -> set[str]:
    """Aliases whose rows an outer join may pad with nulls: filters on them cannot move below the join."""
    aliases = [select.args["from_"].this.alias_or_name] if select.args.get("from_") else []
    padded: set[str] = set()
    for join in select.args.get("joins") or []:
        side = (join.side or "").upper()
        alias = join.this.alias_or_name
        if side == "LEFT":
            padded.add(alias)
        elif side == "RIGHT":
            padded.update(aliases)
        elif side == "FULL":
            padded.update(aliases)
            padded.add(alias)
        aliases.append(alias)
    return padded


def aliased_table(name: str, alias: str) -> exp.Table:
    return exp.Table(this=exp.to_identifier(name, quoted=True), alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True)))


def subtree(scope: Scope) -> list[Scope]:
    return list(scope.traverse())


def references_to(scope: Scope, aliases: set[str], attached) -> list[exp.Column]:
    """The query's references to these aliases of `scope`, in it and correlated from the scopes
    nested in it, that are still `attached` to the query."""
    external = [c for s in subtree(scope) if s is not scope for c in s.external_columns]
    found = {id(c): c for c in [*scope.columns, *external] if c.table in aliases and attached(c)}
    return list(found.values())
