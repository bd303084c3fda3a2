"""Rule: every part of the query that touches one silo only and does not depend on an outer query
(the whole query, a CTE, a derived table, an IN/EXISTS/scalar subquery, a UNION branch) runs in
that silo whole: joins among its own tables, filters, aggregation, window functions and all. The
part is replaced by a read of its fragment; the walk does not go below a part it pushed."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, build_scope

from fedlake.query.rules.planning import Fragment, Planning, PlanningError
from fedlake.query.rules.sql import subtree


class _WholeParts:
    def __init__(self, planning: Planning):
        self.planning = planning
        self.silos = planning.silos
        self.cte_bodies = {cte.alias_or_name: cte.this.copy() for cte in planning.tree.find_all(exp.CTE)}
        self.cte_silos: dict[str, set[str]] = {}
        for cte in planning.tree.find_all(exp.CTE):
            self.cte_silos[cte.alias_or_name] = self.silos_of(cte.this)

    def silos_of(self, node: exp.Expression) -> set[str]:
        found: set[str] = set()
        for table in node.find_all(exp.Table):
            if table.db in self.silos:
                found.add(table.db)
            elif not table.db and table.name in self.cte_silos:
                found |= self.cte_silos[table.name]
        return found

    @staticmethod
    def self_contained(scope: Scope) -> bool:
        names = {name for s in subtree(scope) for name in s.sources}
        return all(c.table in names for s in subtree(scope) for c in s.external_columns) and not scope.external_columns

    def pushable(self, scope: Scope) -> str | None:
        """The one silo a part of the query can run in whole, if any. A part that reads a silo only
        through CTEs already placed (no table of its own) stays above, reading their results,
        rather than computing them again in the silo and sending them twice."""
        silos = self.silos_of(scope.expression)
        own_tables = any(t.db in self.silos for t in scope.expression.find_all(exp.Table))
        if len(silos) == 1 and own_tables and self.self_contained(scope):
            return silos.pop()
        return None

    def referenced_ctes(self, node: exp.Expression) -> list[str]:
        """CTEs a part of the query reads but does not define, in definition order, transitively."""
        defined_inside = {cte.alias_or_name for cte in node.find_all(exp.CTE)}
        needed: list[str] = []

        def visit(n: exp.Expression) -> None:
            for table in n.find_all(exp.Table):
                name = table.name
                if not table.db and name in self.cte_bodies and name not in defined_inside and name not in needed:
                    visit(self.cte_bodies[name])
                    needed.append(name)

        visit(node)
        order = list(self.cte_bodies)
        return sorted(needed, key=order.index)

    def fragment_sql(self, node: exp.Expression) -> str:
        body = node.copy()
        ctes = self.referenced_ctes(node)
        if ctes:
            definitions = [exp.CTE(this=self.cte_bodies[n].copy(), alias=exp.to_identifier(n, quoted=True)) for n in ctes]
            body.set("with_", exp.With(expressions=definitions))
        for table in body.find_all(exp.Table):
            if table.db in self.silos:
                table.set("db", None)
        return body.sql("duckdb")

    def push(self, scope: Scope, silo: str) -> None:
        node = scope.expression
        name = self.planning.next_name()
        tables = tuple(sorted({t.name for t in node.find_all(exp.Table) if t.db == silo}))
        self.planning.fragments.append(Fragment(name, silo, self.fragment_sql(node), "pushed", tables))
        self.planning.replace(node, exp.select("*").from_(exp.to_table(name, quoted=True)))

    def walk(self, scope: Scope) -> None:
        silo = self.pushable(scope)
        if silo is not None:
            self.push(scope, silo)
            return
        for child in [*scope.cte_scopes, *scope.derived_table_scopes, *scope.subquery_scopes,
                      *scope.set_operation_scopes, *scope.udtf_scopes]:
            self.walk(child)


def push_whole(planning: Planning) -> Planning:
    root = build_scope(planning.tree)
    if root is None:
        raise PlanningError("cannot analyse the query's scopes")
    _WholeParts(planning).walk(root)
    return planning
