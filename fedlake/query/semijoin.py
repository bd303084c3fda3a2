"""Semi-join reduction: which fragments may drop the rows that a join, an IN or an EXISTS above
will drop anyway.

For an equality `x.a = y.b` in the residual query, under an inner join (or where `y` is the right
side of a LEFT join), a row of `y` whose `b` is not among the values of `x.a` contributes nothing.
When `b` reaches `y` from one fragment's column unchanged (through projections, filters, GROUP BY
on it, DISTINCT and UNION branches; not through LIMIT or window functions, which would see the
missing rows), that fragment may send only the rows whose key is among the keys of the fragment
that `a` comes from. A fragment read from several places (a CTE used twice) is reduced only when
every place it is read from is reduced by the same keys; a join inside a CTE reduces what it reads,
whatever reads the CTE, which sees only the join's result.

The same holds for `x.a IN (subquery)` standing as a condition of WHERE or an inner join (either
side reduces the other; where the subquery mixes silos, its residual computes the exact keys, e.g.
the 57 orders a grouped HAVING keeps) and for a correlated subquery whose WHERE compares `y.b =
x.a` with an outer `x`: its rows with other values never match (EXISTS, NOT EXISTS, scalar), and
under EXISTS as a condition the outer rows without a match are dropped too.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp
from sqlglot.optimizer.scope import Scope

from fedlake.keyset import MAX_KEYS, keyset_bytes
from fedlake.query.key_paths import Column, ResidualPaths, Trace
from fedlake.query.rules.sql import conjuncts

MAX_FILTER_KEYS = MAX_KEYS  # keys beyond which binding them costs more than a semi-join saves
FILTER_SHARE = 1 / 8  # a filter is sent if it costs at most this share of what its probe is estimated to send


@dataclass
class SemiJoin:
    probe: Column  # the fragment whose rows are reduced, and its key column
    build: tuple[Column, ...]  # where the keys come from (a union: several fragments); every key is among their values
    condition: str  # the condition it stands for, as the residual writes it
    keys_sql: str = ""  # if set: a query over fragments (in DuckDB) whose one column is exactly the keys, fewer than build's
    reads: tuple[str, ...] = ()  # the fragments keys_sql reads

    @property
    def sources(self) -> set[str]:
        """Every fragment the keys are computed from."""
        return {k.fragment for k in self.build} | set(self.reads)


@dataclass(frozen=True)
class _Side:
    """One side of a link: `alias.column` in `scope`, or the output `column` of `scope` itself."""

    scope: Scope
    alias: str | None
    column: str


@dataclass(frozen=True)
class _Link:
    probe: _Side  # reduced
    build: _Side  # by the values of this side
    condition: exp.Expression
    stop: Scope  # the scope whose CTE, if any, holds the condition
    keys_sql: str = ""
    reads: tuple[str, ...] = ()


def _positive_terms(select: exp.Select) -> list[tuple[exp.Expression, set[str] | None]]:
    """The conditions that drop a row when false or null, with the aliases whose rows they may
    reduce (None: any): every term of WHERE and of an inner join's ON; a LEFT join's ON reduces
    its right side only. RIGHT, FULL, ANTI, SEMI and ASOF joins are left alone."""
    where = select.args.get("where")
    terms: list[tuple[exp.Expression, set[str] | None]] = [(c, None) for c in conjuncts(where.this if where else None)]
    for join in select.args.get("joins") or []:
        side, on = (join.side or "").upper(), join.args.get("on")
        if on is None or side in ("RIGHT", "FULL") or (join.kind or "").upper() in ("ANTI", "SEMI", "ASOF"):
            continue
        reducible = {join.this.alias_or_name} if side == "LEFT" else None
        terms += [(c, reducible) for c in conjuncts(on)]
    return terms


def _columns_apart(condition: exp.Expression) -> tuple[exp.Column, exp.Column] | None:
    if not isinstance(condition, exp.EQ):
        return None
    left, right = condition.left, condition.right
    if not (isinstance(left, exp.Column) and isinstance(right, exp.Column)) or left.table == right.table:
        return None
    return left, right


def _reducible(alias: str, allowed: set[str] | None) -> bool:
    return allowed is None or alias in allowed


def _equalities(scope: Scope) -> list[_Link]:
    found = []
    for condition, allowed in _positive_terms(scope.expression):
        pair = _columns_apart(condition)
        if pair is None:
            continue
        for probe, build in (pair, pair[::-1]):
            if _reducible(probe.table, allowed):
                found.append(_Link(_Side(scope, probe.table, probe.name), _Side(scope, build.table, build.name), condition, scope))
    return found


def _subquery_scope(scope: Scope, query: exp.Expression) -> Scope | None:
    return next((s for s in scope.subquery_scopes if s.expression is query), None)


def _standalone_sql(paths: ResidualPaths, scope: Scope) -> tuple[str, tuple[str, ...]] | None:
    """An uncorrelated subquery of the residual as a query of its own (with the CTEs it reads), and
    the fragments it reads; None if it depends on an outer query."""
    inside = {name for s in scope.traverse() for name in s.sources}
    if scope.external_columns or any(c.table not in inside for s in scope.traverse() for c in s.external_columns):
        return None
    body = scope.expression.copy()
    ctes = {cte.alias_or_name: cte for cte in paths.tree.find_all(exp.CTE)}
    needed: list[str] = []

    def visit(node: exp.Expression) -> None:
        for table in node.find_all(exp.Table):
            if not table.db and table.name in ctes and table.name not in needed:
                visit(ctes[table.name].this)
                needed.append(table.name)

    visit(body)
    if needed:
        order = list(ctes)
        body.set("with_", exp.With(expressions=[ctes[n].copy() for n in sorted(needed, key=order.index)]))
    reads = tuple(sorted({t.name for t in body.find_all(exp.Table) if not t.db and t.name in paths.fragments}))
    return body.sql("duckdb"), reads


def _bare_read(query: exp.Expression) -> bool:
    """`SELECT * FROM fragment`: its keys are the fragment's column already."""
    return (
        isinstance(query, exp.Select) and query.is_star and isinstance(query.args.get("from_") and query.args["from_"].this, exp.Table)
        and not any(query.args.get(k) for k in ("joins", "where", "group", "having", "qualify", "limit", "offset", "distinct"))
    )


def _memberships(paths: ResidualPaths, scope: Scope) -> list[_Link]:
    """`x.a IN (subquery)` as a condition: the subquery's values reduce `x`; `x.a`'s values reduce
    the rows the subquery reads (a NULL among them only turns a false IN into a null one, which
    drops the row all the same)."""
    found = []
    for condition, allowed in _positive_terms(scope.expression):
        if not isinstance(condition, exp.In) or not isinstance(condition.this, exp.Column):
            continue
        query = condition.args.get("query")
        inner = _subquery_scope(scope, query.this) if isinstance(query, exp.Subquery) else None
        names = paths.output_names(inner) if inner is not None else None
        if not names or len(names) != 1:
            continue
        outer, output = _Side(scope, condition.this.table, condition.this.name), _Side(inner, None, names[0])
        if _reducible(outer.alias, allowed):
            keys_sql, reads = ("", ()) if _bare_read(inner.expression) else _standalone_sql(paths, inner) or ("", ())
            found.append(_Link(outer, output, condition, scope, keys_sql, reads))
        found.append(_Link(output, outer, condition, scope))
    return found


def _correlations(scope: Scope) -> list[_Link]:
    """A subquery whose WHERE compares `y.b = x.a`, with `x` a source of an enclosing scope: rows of
    `y` whose `b` is not among `x.a`'s values match no outer row, whatever the subquery is used for.
    Where it is the subquery of an EXISTS standing as a condition of its scope, and it makes no row
    without a match (no aggregate without GROUP BY), `x`'s rows without a match are dropped too."""
    select, parent = scope.expression, scope.parent
    if not isinstance(select, exp.Select) or parent is None or not scope.is_subquery:
        return []
    exists = select.parent if isinstance(select.parent, exp.Exists) else None
    always_a_row = not select.args.get("group") and any(p.find(exp.AggFunc) for p in select.expressions)
    conditions = {id(c): allowed for c, allowed in _positive_terms(parent.expression)} if isinstance(parent.expression, exp.Select) else {}
    found = []
    for condition in conjuncts(select.args["where"].this if select.args.get("where") else None):
        pair = _columns_apart(condition)
        if pair is None:
            continue
        for inner, outer in (pair, pair[::-1]):
            if inner.table not in scope.selected_sources or outer.table in scope.selected_sources:
                continue
            home = parent
            while home is not None and outer.table not in home.selected_sources:
                home = home.parent
            if home is None:
                continue
            found.append(_Link(_Side(scope, inner.table, inner.name), _Side(home, outer.table, outer.name), condition, scope))
            if exists is not None and home is parent and id(exists) in conditions and not always_a_row \
                    and _reducible(outer.table, conditions[id(exists)]):
                found.append(_Link(_Side(parent, outer.table, outer.name), _Side(scope, inner.table, inner.name), condition, parent))
    return found


def _trace(paths: ResidualPaths, side: _Side, strict: bool) -> Trace | None:
    if side.alias is None:
        return paths.trace_output(side.scope, side.column, strict)
    return paths.trace(side.scope, side.alias, side.column, strict)


def find_semijoins(residual: str, fragments: dict[str, list[str]]) -> list[SemiJoin]:
    """Every semi-join that may reduce a fragment of a cut query without changing its result."""
    paths = ResidualPaths(residual, fragments)
    links: list[_Link] = []
    for scope in paths.root.traverse():
        if isinstance(scope.expression, exp.Select):
            links += _equalities(scope) + _memberships(paths, scope) + _correlations(scope)
    proposals: dict[tuple[Column, tuple[Column, ...], str], tuple[Trace, str, set[str], tuple[str, ...]]] = {}
    for link in links:
        probe, build = _trace(paths, link.probe, strict=True), _trace(paths, link.build, strict=False)
        if probe is None or build is None:
            continue
        keys = tuple(sorted(set(build.targets), key=lambda c: (c.fragment, c.name)))
        stop = paths.enclosing_cte(link.stop)
        for target in probe.targets:
            if any(b.fragment == target.fragment for b in keys) or target.fragment in link.reads:
                continue
            previous, _, stops, _ = proposals.get((target, keys, link.keys_sql), (Trace(), "", set(), ()))
            proposals[(target, keys, link.keys_sql)] = (
                Trace([target], previous.references | probe.references),
                link.condition.sql("duckdb"),
                stops | ({stop} if stop else set()),
                link.reads,
            )
    return [
        SemiJoin(target, keys, condition, keys_sql, reads)
        for (target, keys, keys_sql), (trace, condition, stops, reads) in proposals.items()
        if paths.references(target.fragment, stops) <= trace.references
    ]


def choose_semijoins(candidates: list[SemiJoin], estimates: dict[str, tuple[int, int] | None]) -> list[SemiJoin]:
    """The semi-joins that may pay: each key set (`keyset_bytes` of its keys, counted as the rows
    estimated for their fragments, often several times too many) costs at most half of what its
    probe is estimated to send; the coordinator checks again with the actual keys before sending
    (`FILTER_SHARE`). Keys computed by a subquery (`keys_sql`: a HAVING, a join) are often far fewer
    than the rows it reads, which no estimate tells: they are counted as at most MAX_FILTER_KEYS,
    and the check with the actual keys decides. A probe may take several (on different columns);
    largest probes first, and a fragment whose keys are sent never waits for keys itself (no cycles,
    no chains)."""
    def usable(c: SemiJoin) -> bool:
        probe = estimates.get(c.probe.fragment)
        builds = [estimates.get(k.fragment) for k in c.build]
        if probe is None or any(b is None for b in builds):
            return False
        keys = sum(rows for rows, _ in builds)
        if c.keys_sql:
            keys = min(keys, MAX_FILTER_KEYS)
        return keys <= MAX_FILTER_KEYS and keyset_bytes(keys) <= probe[1] / 2

    chosen: list[SemiJoin] = []
    probes: set[str] = set()
    builds: set[str] = set()
    columns: set[Column] = set()
    for candidate in sorted(filter(usable, candidates), key=lambda c: -estimates[c.probe.fragment][1]):
        sources = candidate.sources
        if candidate.probe in columns or candidate.probe.fragment in builds or sources & probes:
            continue
        chosen.append(candidate)
        probes.add(candidate.probe.fragment)
        columns.add(candidate.probe)
        builds |= sources
    return chosen
