"""Following a column of a residual query down to the fragment columns its values come from:
through projections, filters, GROUP BY on it, DISTINCT and UNION branches, CTEs and derived tables.
Strictly (every row of the fragment with a given value shows that value here, so dropping the
fragment's rows with other values changes nothing here) or loosely (the values here are among the
fragment's). Semi-joins are found along these paths."""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.optimizer.scope import Scope, build_scope


@dataclass(frozen=True)
class Column:
    fragment: str
    name: str


@dataclass
class Trace:
    targets: list[Column] = field(default_factory=list)
    references: set[int] = field(default_factory=set)  # ids of the Table nodes passed through


def is_star(projection: exp.Expression) -> bool:
    return isinstance(projection, exp.Star) or (isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star))


class ResidualPaths:
    """The paths by which a residual query's columns come from its fragments' columns."""

    def __init__(self, residual: str, fragments: dict[str, list[str]]):
        self.tree = sqlglot.parse_one(residual, read="duckdb")
        self.root = build_scope(self.tree)
        self.fragments = fragments  # name -> its output columns

    # -- following a column down to the fragment it comes from ---------------------------------

    def trace(self, scope: Scope, alias: str, column: str, strict: bool) -> Trace | None:
        """The fragment columns whose values `alias.column` takes in `scope`. Strict: every row of the
        source with a given value shows that value here (so filtering the source on it loses only rows
        with other values). Loose: the values here are among the fragment's."""
        selected = scope.selected_sources.get(alias)
        if selected is None:
            return None
        node, source = selected
        if isinstance(source, exp.Table):
            if source.name in self.fragments and not source.db:
                return Trace([Column(source.name, column)], {id(node)})
            return None
        inner = self.trace_output(source, column, strict)
        if inner is not None and isinstance(node, exp.Table):
            inner.references.add(id(node))
        return inner

    def trace_output(self, scope: Scope, column: str, strict: bool) -> Trace | None:
        """The fragment columns whose values the output `column` of `scope` takes."""
        expression = scope.expression
        if isinstance(expression, exp.SetOperation):
            if isinstance(expression, exp.Except) or not scope.set_operation_scopes:
                return None
            branches = self._branches(scope)
            names = self.output_names(branches[0])
            if names is None or column not in names:
                return None
            position = names.index(column)
            combined = Trace()
            for branch in branches:
                branch_names = self.output_names(branch)
                if branch_names is None or position >= len(branch_names):
                    return None
                found = self._trace_select(branch, branch_names[position], strict)
                if found is None:
                    return None
                combined.targets += found.targets
                combined.references |= found.references
            return combined
        if isinstance(expression, exp.Select):
            return self._trace_select(scope, column, strict)
        return None

    def output_names(self, scope: Scope) -> list[str] | None:
        """The output columns of a part of the residual, with `*` over one source expanded."""
        expression = scope.expression
        if isinstance(expression, exp.SetOperation):
            branches = self._branches(scope)
            return self.output_names(branches[0]) if branches else None
        if not isinstance(expression, exp.Select):
            return None
        names: list[str] = []
        for projection in expression.expressions:
            if not is_star(projection):
                names.append(projection.alias_or_name)
                continue
            if len(scope.selected_sources) != 1:
                return None
            (_, source), = scope.selected_sources.values()
            if isinstance(source, exp.Table):
                if source.name not in self.fragments:
                    return None
                names += self.fragments[source.name]
            else:
                inner = self.output_names(source)
                if inner is None:
                    return None
                names += inner
        return names

    def _branches(self, scope: Scope) -> list[Scope]:
        branches = []
        for child in scope.set_operation_scopes:
            if isinstance(child.expression, exp.SetOperation):
                branches += self._branches(child)
            else:
                branches.append(child)
        return branches

    def _trace_select(self, scope: Scope, column: str, strict: bool) -> Trace | None:
        select = scope.expression
        if not isinstance(select, exp.Select):
            return None
        if strict and (
            select.args.get("limit") or select.args.get("offset") or select.args.get("distinct") and select.args["distinct"].args.get("on")
            or any(isinstance(p.unalias(), exp.Window) or p.find(exp.Window) for p in select.expressions)
        ):
            return None
        for projection in select.expressions:
            if is_star(projection) and len(scope.selected_sources) == 1:
                (alias,) = scope.selected_sources
                return self.trace(scope, alias, column, strict)
        projection = next((p for p in select.expressions if p.alias_or_name == column), None)
        if projection is None:
            return None
        value = projection.unalias()
        if not isinstance(value, exp.Column):
            return None
        alias = value.table or (next(iter(scope.selected_sources)) if len(scope.selected_sources) == 1 else "")
        if not alias:
            return None
        if strict and self._aggregates(select) and not self._grouped_on(select, value.name, alias, scope):
            return None
        return self.trace(scope, alias, value.name, strict)

    @staticmethod
    def _aggregates(select: exp.Select) -> bool:
        return bool(select.args.get("group")) or any(p.find(exp.AggFunc) for p in select.expressions)

    @staticmethod
    def _grouped_on(select: exp.Select, name: str, alias: str, scope: Scope) -> bool:
        group = select.args.get("group")
        if group is None:
            return False
        if group.args.get("all"):
            return True
        only = len(scope.selected_sources) == 1
        return any(
            isinstance(g, exp.Column) and g.name == name and (g.table == alias or (not g.table and only))
            for g in group.expressions
        )

    # -- where the residual reads each fragment from ------------------------------------------

    def references(self, fragment: str, stops: set[str]) -> set[int]:
        """Every Table node through which rows of `fragment` reach the query: its own references,
        and the references of every CTE whose body reads it, transitively; not beyond the CTEs in
        `stops`, whose bodies hold the joins that reduce it (what reads them sees only the join)."""
        found: set[int] = set()
        todo = [fragment]
        seen: set[str] = set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            for table in self.tree.find_all(exp.Table):
                if table.name != name or table.db:
                    continue
                found.add(id(table))
                cte = table.find_ancestor(exp.CTE)
                if cte is not None and cte.alias_or_name not in stops:
                    todo.append(cte.alias_or_name)
        return found

    @staticmethod
    def enclosing_cte(scope: Scope) -> str | None:
        cte = scope.expression.find_ancestor(exp.CTE)
        return cte.alias_or_name if cte is not None else None
