"""Semi-join reduction: which fragments may drop the rows that an equi-join above will drop anyway.

For an equality `x.a = y.b` in the residual query, under an inner join (or where `y` is the right
side of a LEFT join), a row of `y` whose `b` is not among the values of `x.a` contributes nothing.
When `b` reaches `y` from one fragment's column unchanged (through projections, filters, GROUP BY
on it, DISTINCT and UNION branches; not through LIMIT or window functions, which would see the
missing rows), that fragment may send only the rows whose key is among the keys of the fragment
that `a` comes from. A fragment read from several places (a CTE used twice) is reduced only when
every place it is read from is reduced by the same keys; a join inside a CTE reduces what it reads,
whatever reads the CTE, which sees only the join's result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.optimizer.scope import Scope, build_scope

from fedlake.bloom import MAX_FILTER_BYTES
from fedlake.query.cut import conjuncts

MAX_FILTER_KEYS = MAX_FILTER_BYTES // 2  # keys beyond which the filter would outgrow its message
FILTER_SHARE = 1 / 8  # a filter is sent if it costs at most this share of what its probe is estimated to send


@dataclass(frozen=True)
class Column:
    fragment: str
    name: str


@dataclass
class SemiJoin:
    probe: Column  # the fragment whose rows are reduced, and its key column
    build: tuple[Column, ...]  # where the keys come from (a union: several fragments)
    condition: str  # the join condition it stands for, as the residual writes it


@dataclass
class _Trace:
    targets: list[Column] = field(default_factory=list)
    references: set[int] = field(default_factory=set)  # ids of the Table nodes passed through


def _is_star(projection: exp.Expression) -> bool:
    return isinstance(projection, exp.Star) or (isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star))


class _Analysis:
    def __init__(self, residual: str, fragments: dict[str, list[str]]):
        self.tree = sqlglot.parse_one(residual, read="duckdb")
        self.root = build_scope(self.tree)
        self.fragments = fragments  # name -> its output columns

    # -- following a column down to the fragment it comes from ---------------------------------

    def trace(self, scope: Scope, alias: str, column: str, strict: bool) -> _Trace | None:
        """The fragment columns whose values `alias.column` takes in `scope`. Strict: every row of the
        source with a given value shows that value here (so filtering the source on it loses only rows
        with other values). Loose: the values here are among the fragment's."""
        selected = scope.selected_sources.get(alias)
        if selected is None:
            return None
        node, source = selected
        if isinstance(source, exp.Table):
            if source.name in self.fragments and not source.db:
                return _Trace([Column(source.name, column)], {id(node)})
            return None
        inner = self._trace_scope(source, column, strict)
        if inner is not None and isinstance(node, exp.Table):
            inner.references.add(id(node))
        return inner

    def _trace_scope(self, scope: Scope, column: str, strict: bool) -> _Trace | None:
        expression = scope.expression
        if isinstance(expression, exp.SetOperation):
            if isinstance(expression, exp.Except) or not scope.set_operation_scopes:
                return None
            branches = self._branches(scope)
            names = self._names(branches[0])
            if names is None or column not in names:
                return None
            position = names.index(column)
            combined = _Trace()
            for branch in branches:
                branch_names = self._names(branch)
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

    def _names(self, scope: Scope) -> list[str] | None:
        """The output columns of a part of the residual, with `*` over one source expanded."""
        expression = scope.expression
        if isinstance(expression, exp.SetOperation):
            branches = self._branches(scope)
            return self._names(branches[0]) if branches else None
        if not isinstance(expression, exp.Select):
            return None
        names: list[str] = []
        for projection in expression.expressions:
            if not _is_star(projection):
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
                inner = self._names(source)
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

    def _trace_select(self, scope: Scope, column: str, strict: bool) -> _Trace | None:
        select = scope.expression
        if not isinstance(select, exp.Select):
            return None
        if strict and (
            select.args.get("limit") or select.args.get("offset") or select.args.get("distinct") and select.args["distinct"].args.get("on")
            or any(isinstance(p.unalias(), exp.Window) or p.find(exp.Window) for p in select.expressions)
        ):
            return None
        for projection in select.expressions:
            if _is_star(projection) and len(scope.selected_sources) == 1:
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

    # -- the equi-joins -----------------------------------------------------------------------

    def equalities(self) -> list[tuple[Scope, exp.EQ, set[str]]]:
        """(scope, a = b, aliases whose rows the equality may reduce) for every usable equality."""
        found = []
        for scope in self.root.traverse():
            select = scope.expression
            if not isinstance(select, exp.Select):
                continue
            candidates: list[tuple[exp.Expression, set[str] | None]] = []
            where = select.args.get("where")
            if where is not None:
                candidates += [(c, None) for c in conjuncts(where.this)]
            for join in select.args.get("joins") or []:
                side, on = (join.side or "").upper(), join.args.get("on")
                if on is None or side in ("RIGHT", "FULL") or (join.kind or "").upper() in ("ANTI", "SEMI", "ASOF"):
                    continue
                reducible = {join.this.alias_or_name} if side == "LEFT" else None
                candidates += [(c, reducible) for c in conjuncts(on)]
            for condition, reducible in candidates:
                if not isinstance(condition, exp.EQ):
                    continue
                left, right = condition.left, condition.right
                if not (isinstance(left, exp.Column) and isinstance(right, exp.Column)) or left.table == right.table:
                    continue
                sides = {left.table, right.table}
                found.append((scope, condition, sides if reducible is None else sides & reducible))
        return found


def find_semijoins(residual: str, fragments: dict[str, list[str]]) -> list[SemiJoin]:
    """Every semi-join that may reduce a fragment of a cut query without changing its result."""
    analysis = _Analysis(residual, fragments)
    proposals: dict[tuple[Column, tuple[Column, ...]], tuple[_Trace, str, set[str]]] = {}
    for scope, condition, reducible in analysis.equalities():
        for probe_side, build_side in ((condition.left, condition.right), (condition.right, condition.left)):
            if probe_side.table not in reducible:
                continue
            probe = analysis.trace(scope, probe_side.table, probe_side.name, strict=True)
            build = analysis.trace(scope, build_side.table, build_side.name, strict=False)
            if probe is None or build is None:
                continue
            keys = tuple(sorted(set(build.targets), key=lambda c: (c.fragment, c.name)))
            stop = analysis.enclosing_cte(scope)
            for target in probe.targets:
                if any(b.fragment == target.fragment for b in keys):
                    continue
                previous, _, stops = proposals.get((target, keys), (_Trace(), "", set()))
                proposals[(target, keys)] = (
                    _Trace([target], previous.references | probe.references),
                    condition.sql("duckdb"),
                    stops | ({stop} if stop else set()),
                )
    return [
        SemiJoin(target, keys, condition)
        for (target, keys), (trace, condition, stops) in proposals.items()
        if analysis.references(target.fragment, stops) <= trace.references
    ]


def choose_semijoins(candidates: list[SemiJoin], estimates: dict[str, tuple[int, int] | None]) -> list[SemiJoin]:
    """The semi-joins that may pay: each filter (about 1.2 bytes per key at a 1 % false-positive
    rate, keys counted as the rows estimated for their fragments, often several times too many)
    costs at most half of what its probe is estimated to send; the coordinator checks again with
    the actual keys before sending (`FILTER_SHARE`). A probe may take several (on different
    columns); largest probes first, and a fragment whose keys are sent never waits for keys itself
    (no cycles, no chains)."""
    def usable(c: SemiJoin) -> bool:
        probe = estimates.get(c.probe.fragment)
        builds = [estimates.get(k.fragment) for k in c.build]
        if probe is None or any(b is None for b in builds):
            return False
        keys = sum(rows for rows, _ in builds)
        return keys <= MAX_FILTER_KEYS and 1.2 * keys <= probe[1] / 2

    chosen: list[SemiJoin] = []
    probes: set[str] = set()
    builds: set[str] = set()
    columns: set[Column] = set()
    for candidate in sorted(filter(usable, candidates), key=lambda c: -estimates[c.probe.fragment][1]):
        sources = {k.fragment for k in candidate.build}
        if candidate.probe in columns or candidate.probe.fragment in builds or sources & probes:
            continue
        chosen.append(candidate)
        probes.add(candidate.probe.fragment)
        columns.add(candidate.probe)
        builds |= sources
    return chosen
