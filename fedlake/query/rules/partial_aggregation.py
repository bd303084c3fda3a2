"""Rule: eager aggregation through a cross-silo join. When one source's columns are all that the
aggregates of an inner-join GROUP BY read, its fragment groups its rows by the columns the rest of
the query uses (join keys, grouping columns) and sends one partial row per group; the residual
combines the partials (SUM of sums and counts, MIN of minima, AVG as a sum over a count).

Only where it reduces: with the tables' statistics, the partial aggregate is pushed only if its
groups (the product of its keys' distinct counts, at most the rows) are at most `PARTIAL_SHARE` of
the rows it reads; grouping as many groups as rows costs the silo time and saves nothing. Without
statistics for every key it is pushed, as it always was."""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.optimizer.scope import Scope, build_scope

from fedlake.query.rules.planning import Fragment, Planning, PlanningError
from fedlake.query.rules.sql import own_nodes, references_to
from fedlake.query.statistics import column_origins, distinct_values, group_estimate, table_rows

PARTIAL_SHARE = 0.5  # a partial aggregate is pushed if its groups are at most this share of its rows

_COMBINABLE = (exp.Sum, exp.Count, exp.Min, exp.Max, exp.Avg)


def _groups_already(fragment: Fragment) -> bool:
    query = sqlglot.parse_one(fragment.sql, read="duckdb")
    return not isinstance(query, exp.Select) or bool(query.args.get("group") or query.args.get("distinct")) or any(
        p.find(exp.AggFunc) for p in query.expressions
    )


def _union_branches(body: exp.Expression, by_name: dict[str, Fragment]) -> list[Fragment]:
    """The pushed fragments a UNION ALL of `SELECT * FROM fragment` reads, in branch order; none
    if the body is anything else."""
    branches, todo = [], [body]
    while todo:
        part = todo.pop(0)
        if isinstance(part, exp.Union):
            if part.args.get("distinct"):
                return []
            todo[:0] = [part.left, part.right]
            continue
        source = part.args.get("from_") and part.args["from_"].this if isinstance(part, exp.Select) else None
        if not (
            isinstance(source, exp.Table) and len(part.expressions) == 1 and isinstance(part.expressions[0], exp.Star)
            and not part.args.get("joins") and not part.args.get("where") and not part.args.get("group")
            and not part.args.get("limit") and source.name in by_name and by_name[source.name].kind == "pushed"
        ):
            return []
        branches.append(by_name[source.name])
    return branches


def pushed_sources(planning: Planning, select: exp.Select) -> dict[str, list[Fragment]]:
    """Sources of a SELECT that are parts pushed whole into silos (a derived table or a CTE, or a
    UNION ALL of them, each now `SELECT * FROM` its fragment), read by this SELECT alone:
    {alias: the fragments, in branch order}."""
    found = {}
    by_name = {f.name: f for f in planning.fragments}
    ctes = {cte.alias_or_name: cte for cte in planning.tree.find_all(exp.CTE)}
    sources = [select.args["from_"].this] if select.args.get("from_") else []
    sources += [join.this for join in select.args.get("joins") or []]
    for node in sources:
        alias = node.alias_or_name
        if isinstance(node, exp.Subquery):
            named, body = node, node.this
        elif isinstance(node, exp.Table) and not node.db and node.name in ctes:
            if sum(t.name == node.name and not t.db for t in planning.tree.find_all(exp.Table)) != 1:
                continue  # a CTE read elsewhere too: the others would see partials
            named, body = ctes[node.name], ctes[node.name].this
        else:
            continue
        if named.args.get("alias") is not None and named.args["alias"].columns:
            continue  # columns renamed by the alias: not the names of its first branch
        branches = _union_branches(body, by_name)
        # a part that already groups its rows gains nothing from grouping them again
        if branches and not any(_groups_already(f) for f in branches):
            found[alias] = branches
    return found


def _scanned_sources(planning: Planning, scope: Scope) -> dict[str, list[Fragment]]:
    """Sources of a scope that are scan or join fragments cut from it."""
    by_name = {f.name: f for f in planning.fragments if f.kind in ("scan", "join")}
    return {
        alias: [by_name[source.name]]
        for alias, source in scope.sources.items()
        if isinstance(source, exp.Table) and not source.db and source.name in by_name
    }


def _estimate(planning: Planning, fragments: list[Fragment], keys: list[str], first_names: list[str] | None) -> tuple[int, int] | None:
    """(groups, rows) of the partial aggregates of these fragments, from the tables' statistics;
    None where a key's distinct count or a table's rows is unknown."""
    if not planning.statistics:
        return None
    groups = rows = 0
    for fragment in fragments:
        origins = column_origins(fragment.sql)
        names = keys
        if first_names is not None:
            own = sqlglot.parse_one(fragment.sql, read="duckdb").named_selects
            names = [own[first_names.index(k)] for k in keys]
        read = table_rows(planning.statistics, fragment.silo, fragment.tables)
        if read is None or any(n not in origins for n in names):
            return None
        estimate = group_estimate([distinct_values(planning.statistics, fragment.silo, origins[n]) for n in names], read)
        if estimate is None:
            return None
        groups, rows = groups + estimate, rows + read
    return groups, rows


def _combinable(select: exp.Select) -> list[exp.AggFunc] | None:
    """The aggregates of an inner-join SELECT, if their partials can be combined above."""
    group = select.args.get("group")
    if group is not None and group.args.get("all"):
        return None
    if any((j.side or "") or (j.kind or "").upper() not in ("", "INNER", "CROSS") for j in select.args.get("joins") or []):
        return None
    distinct = select.args.get("distinct")
    if distinct is not None and distinct.args.get("on"):
        return None
    local = list(own_nodes(select))
    if any(isinstance(n, exp.Window) for n in local):
        return None
    aggregates = [n for n in local if isinstance(n, exp.AggFunc)]
    if not aggregates or any(isinstance(a.parent, exp.Filter) or a.find(exp.Distinct, exp.Subquery) for a in aggregates):
        return None
    return aggregates


def pre_aggregate(planning: Planning, scope: Scope) -> None:
    select = scope.expression
    if not isinstance(select, exp.Select):
        return
    aggregates = _combinable(select)
    if aggregates is None:
        return
    pushed = pushed_sources(planning, select)
    targets = {**_scanned_sources(planning, scope), **pushed}
    readers = {c.table for a in aggregates for c in a.find_all(exp.Column)} & set(targets)
    if len(readers) != 1:
        return
    alias = readers.pop()
    fragments = targets[alias]
    if any(f.name in planning.raw for f in fragments):
        return
    mine, others = [], []
    for a in aggregates:
        (mine if alias in {c.table for c in a.find_all(exp.Column)} else others).append(a)
    if any({c.table for c in a.find_all(exp.Column)} != {alias} or not isinstance(a, _COMBINABLE) for a in mine):
        return
    if any(not (isinstance(a, (exp.Min, exp.Max)) or (isinstance(a, exp.Count) and isinstance(a.this, exp.Star))) for a in others):
        return
    inside = {id(c) for a in mine for c in a.find_all(exp.Column)}
    keys = sorted({c.name for c in references_to(scope, {alias}, planning.attached) if id(c) not in inside})
    if not keys:
        return
    # a pushed source's columns are named by its first branch, by position in the others
    names = sqlglot.parse_one(fragments[0].sql, read="duckdb").named_selects if alias in pushed else None
    estimate = _estimate(planning, fragments, keys, names)
    if estimate is not None and estimate[0] > PARTIAL_SHARE * estimate[1]:
        groups, rows = estimate
        note = (f"partial aggregation per {', '.join(keys)} not pushed: about {groups:,} groups of {rows:,} rows "
                f"(from the tables' statistics), more than {PARTIAL_SHARE:.0%}")
        for fragment in fragments:
            fragment.notes += (note,)
        return
    partials, kinds = _combine_partials(aggregates, mine, alias)
    for fragment in fragments:
        fragment.sql = _aggregated_sql(fragment.sql, keys, partials, names)
        fragment.partial = f"{kinds} per {', '.join(keys)}"


class _Partials:
    def __init__(self, alias: str):
        self.alias = alias
        self.partials: dict[str, exp.Expression] = {}  # name -> the aggregate each fragment computes
        self._named: dict[str, str] = {}

    def column(self, expression: exp.Expression) -> exp.Column:
        text = expression.sql("duckdb")
        if text not in self._named:
            self._named[text] = f"__p{len(self.partials)}"
            self.partials[self._named[text]] = expression.copy()
        return exp.column(self._named[text], table=self.alias, quoted=True)


def _total(column: exp.Expression) -> exp.Expression:
    return exp.Coalesce(this=exp.Cast(this=exp.Sum(this=column), to=exp.DataType.build("BIGINT")), expressions=[exp.Literal.number(0)])


def _combine_partials(aggregates: list[exp.AggFunc], mine: list[exp.AggFunc], alias: str) -> tuple[dict[str, exp.Expression], str]:
    """Replace each aggregate of the residual by the combination of the fragment's partials:
    ({name: the aggregate each fragment computes}, what they are, for EXPLAIN)."""
    partials = _Partials(alias)
    own = {id(a) for a in mine}
    kinds = []
    for a in aggregates:
        if isinstance(a, exp.Count) and isinstance(a.this, exp.Star):
            a.replace(_total(exp.column("__n", table=alias, quoted=True)))
            kinds.append("COUNT(*)")
        elif id(a) not in own:
            continue
        elif isinstance(a, exp.Count):
            a.replace(_total(partials.column(exp.Count(this=a.this.copy()))))
            kinds.append("COUNT")
        elif isinstance(a, exp.Avg):
            sums = partials.column(exp.Sum(this=a.this.copy()))
            counts = partials.column(exp.Count(this=a.this.copy()))
            a.replace(exp.Div(this=exp.Cast(this=exp.Sum(this=sums), to=exp.DataType.build("DOUBLE")),
                              expression=exp.Nullif(this=exp.Sum(this=counts), expression=exp.Literal.number(0))))
            kinds.append("AVG as SUM and COUNT")
        else:
            a.replace(type(a)(this=partials.column(type(a)(this=a.this.copy()))))
            kinds.append(type(a).__name__.upper())
    return partials.partials, ", ".join(dict.fromkeys(kinds))


def _aggregated_sql(sql: str, keys: list[str], partials: dict[str, exp.Expression], union_names: list[str] | None) -> str:
    """A fragment rewritten to send its partial aggregates per key instead of its rows. A scan or a
    join aggregates its own expressions over the same FROM, joins and filters (so the gate still
    sees the tables read); a UNION branch aggregates its result, its columns named by position."""
    query = sqlglot.parse_one(sql, read="duckdb")
    if union_names is None:
        source_of = {p.alias_or_name: p.unalias() for p in query.expressions}
    else:
        own = query.named_selects
        source_of = {name: exp.column(own[i], table="__t", quoted=True) for i, name in enumerate(union_names)}
        query = exp.select("*").from_(exp.Subquery(this=query, alias=exp.TableAlias(this=exp.to_identifier("__t", quoted=True))))

    def at_source(expression: exp.Expression) -> exp.Expression:
        moved = expression.copy()
        for column in list(moved.find_all(exp.Column)):
            column.replace(source_of[column.name].copy())
        return moved

    outputs = [exp.alias_(source_of[k].copy(), k, quoted=True) for k in keys]
    outputs.append(exp.alias_(exp.Count(this=exp.Star()), "__n", quoted=True))
    outputs += [exp.alias_(at_source(expression), name, quoted=True) for name, expression in partials.items()]
    query.set("expressions", outputs)
    query.set("group", exp.Group(expressions=[source_of[k].copy() for k in keys]))
    return query.sql("duckdb")


def partial_aggregation(planning: Planning) -> Planning:
    root = build_scope(planning.tree)
    if root is None:
        raise PlanningError("cannot analyse the query's scopes")
    for scope in root.traverse():
        pre_aggregate(planning, scope)
    return planning
