"""Cutting a federated query into per-silo fragments and the residual query over them.

A query names tables as `silo.table`. Every part of it that touches one silo only and does not
depend on an outer query (the whole query, a CTE, a derived table, an IN/EXISTS/scalar subquery, a
UNION branch) is pushed into that silo whole: joins among its own tables, filters, aggregation,
window functions and all. What mixes silos stays above, in the residual query, which reads each
remaining table through a fragment that carries only the columns the query uses and the filters that
touch that table alone (from WHERE, and from join conditions where outer-join semantics allow).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, ParseError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope

from fedlake.agent.lineage import name_outputs
from fedlake.errors import FedlakeError


class PlanningError(FedlakeError):
    """The query cannot be planned: it does not parse, or names an unknown silo, table or column."""


@dataclass
class Fragment:
    name: str  # how the residual query refers to its result
    silo: str
    sql: str  # DuckDB dialect over the silo's own table names
    kind: str  # "pushed" (a whole part of the query), "join" (its own tables joined) or "scan" (one table)
    tables: tuple[str, ...]
    filters: tuple[str, ...] = ()
    partial: str = ""  # the partial aggregation computed in the silo, if any: "SUM, COUNT(*) per k1, k2"


@dataclass
class Cut:
    sql: str  # the query as qualified
    residual: str  # runs above the fragments, in DuckDB, over the fragments' names
    fragments: list[Fragment] = field(default_factory=list)


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


def qualify_query(sql: str, schema: dict[str, dict[str, dict[str, str]]], silos: set[str]) -> exp.Expression:
    try:
        statements = sqlglot.parse(sql, read="duckdb")
    except ParseError as exc:
        raise PlanningError(f"cannot parse the query: {exc}") from None
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        raise PlanningError("a federated query is exactly one SELECT (with CTEs, subqueries and set operations)")
    tree = name_outputs(statements[0])
    for table in tree.find_all(exp.Table):
        if table.catalog:
            raise PlanningError(f"name tables as silo.table, not {table.sql()}")
        if table.db and table.db not in silos:
            raise PlanningError(f"unknown silo '{table.db}' in {table.sql()} (silos: {', '.join(sorted(silos))})")
        if table.db and table.name not in schema.get(table.db, {}):
            known = ", ".join(sorted(schema.get(table.db, {}))) or "none that the query names"
            raise PlanningError(f"unknown table {table.db}.{table.name} (known: {known})")
    try:
        used = {silo: tables for silo, tables in schema.items() if tables}
        return qualify(tree, schema=used, dialect="duckdb", validate_qualify_columns=True, quote_identifiers=True)
    except OptimizeError as exc:
        raise PlanningError(f"the query does not fit the silos' tables: {exc}") from None


class _Cutter:
    def __init__(self, tree: exp.Expression, silos: set[str], raw: set[str]):
        self.root = tree  # the residual query; replaced whole when the whole query goes to one silo
        self.silos = silos
        self.raw = raw  # fragments that send rows, not partial aggregates
        self.fragments: list[Fragment] = []
        self.cte_bodies = {cte.alias_or_name: cte.this.copy() for cte in tree.find_all(exp.CTE)}
        self.cte_silos: dict[str, set[str]] = {}
        for cte in tree.find_all(exp.CTE):
            self.cte_silos[cte.alias_or_name] = self._silos_of(cte.this)

    def _silos_of(self, node: exp.Expression) -> set[str]:
        found: set[str] = set()
        for table in node.find_all(exp.Table):
            if table.db in self.silos:
                found.add(table.db)
            elif not table.db and table.name in self.cte_silos:
                found |= self.cte_silos[table.name]
        return found

    def _next_name(self) -> str:
        return f"__f{len(self.fragments)}"

    # -- whole parts of the query ---------------------------------------------------------------

    @staticmethod
    def _subtree(scope: Scope) -> list[Scope]:
        return list(scope.traverse())

    def _self_contained(self, scope: Scope) -> bool:
        names = {name for s in self._subtree(scope) for name in s.sources}
        return all(c.table in names for s in self._subtree(scope) for c in s.external_columns) and not scope.external_columns

    def _pushable(self, scope: Scope) -> str | None:
        """The one silo a part of the query can run in whole, if any. A part that reads a silo only
        through CTEs already placed (no table of its own) stays above, reading their results,
        rather than computing them again in the silo and sending them twice."""
        silos = self._silos_of(scope.expression)
        own_tables = any(t.db in self.silos for t in scope.expression.find_all(exp.Table))
        if len(silos) == 1 and own_tables and self._self_contained(scope):
            return silos.pop()
        return None

    def _referenced_ctes(self, node: exp.Expression) -> list[str]:
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

    def _fragment_sql(self, node: exp.Expression) -> str:
        body = node.copy()
        ctes = self._referenced_ctes(node)
        if ctes:
            with_ = exp.With(expressions=[exp.CTE(this=self.cte_bodies[n].copy(), alias=exp.to_identifier(n, quoted=True)) for n in ctes])
            body.set("with_", with_)
        for table in body.find_all(exp.Table):
            if table.db in self.silos:
                table.set("db", None)
        return body.sql("duckdb")

    def _push_whole(self, scope: Scope, silo: str) -> None:
        node = scope.expression
        name = self._next_name()
        tables = tuple(sorted({t.name for t in node.find_all(exp.Table) if t.db == silo}))
        self.fragments.append(Fragment(name, silo, self._fragment_sql(node), "pushed", tables))
        replacement = exp.select("*").from_(exp.to_table(name, quoted=True))
        if node is self.root:
            self.root = replacement
        else:
            node.replace(replacement)

    # -- single tables inside a part that mixes silos ------------------------------------------

    def _null_supplying(self, select: exp.Select) -> set[str]:
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

    @staticmethod
    def _conjuncts(condition: exp.Expression | None) -> list[exp.Expression]:
        return conjuncts(condition)

    def _local_filters(self, select: exp.Select, alias: str) -> list[exp.Expression]:
        padded = self._null_supplying(select)
        candidates: list[exp.Expression] = []
        where = select.args.get("where")
        if where is not None and alias not in padded:
            candidates += self._conjuncts(where.this)
        for join in select.args.get("joins") or []:
            side = (join.side or "").upper()
            on = join.args.get("on")
            if on is None:
                continue
            if side == "" and alias not in padded:
                candidates += self._conjuncts(on)
            elif side == "LEFT" and join.this.alias_or_name == alias:
                candidates += self._conjuncts(on)

        def local(condition: exp.Expression) -> bool:
            columns = list(condition.find_all(exp.Column))
            return (
                bool(columns)
                and all(c.table == alias for c in columns)
                and not any(isinstance(n, (exp.Subquery, exp.Select)) for n in condition.walk())
                and not any(isinstance(n, exp.AggFunc) for n in condition.walk())
            )

        return [c for c in candidates if local(c)]

    def _attached(self, node: exp.Expression) -> bool:
        """Whether a node is still part of the residual query (filters moved into a silo are not)."""
        while node.parent is not None:
            node = node.parent
        return node is self.root

    def _columns_of(self, scope: Scope, aliases: set[str]) -> list[exp.Column]:
        """The residual's references to these aliases, in this scope and correlated from inner ones."""
        external = [c for s in self._subtree(scope) if s is not scope for c in s.external_columns]
        found = {id(c): c for c in [*scope.columns, *external] if c.table in aliases and self._attached(c)}
        return list(found.values())

    def _scan(self, scope: Scope, alias: str, table: exp.Table) -> None:
        select = scope.expression
        filters = self._local_filters(select, alias) if isinstance(select, exp.Select) else []
        pushed = [f.copy() for f in filters]
        for condition in filters:
            # applied in the silo, to the raw values; the residual may only see pseudonyms of them
            condition.replace(exp.true())
        columns = sorted({c.name for c in self._columns_of(scope, {alias})})
        source = exp.Table(this=exp.to_identifier(table.name, quoted=True), alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True)))
        projection = [exp.alias_(exp.column(c, table=alias, quoted=True), c, quoted=True) for c in columns] or [
            exp.alias_(exp.Literal.number(1), "__fl_row", quoted=True)
        ]
        query = exp.select(*projection).from_(source)
        for condition in pushed:
            query = query.where(condition)
        name = self._next_name()
        self.fragments.append(
            Fragment(name, table.db, query.sql("duckdb"), "scan", (table.name,), tuple(f.sql("duckdb") for f in pushed))
        )
        table.replace(exp.Table(this=exp.to_identifier(name, quoted=True), alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True))))

    # -- joins among one silo's tables inside a part that mixes silos ---------------------------

    def _join_groups(self, scope: Scope) -> list[list[str]]:
        """Aliases of one silo joined to each other by conditions of their own, among the FROM table
        and the inner joins that come before any outer join: such a group runs as one fragment,
        joined inside its silo, and takes the place of the FROM table in the residual."""
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
        tables = {
            a: t for a, t in scope.sources.items() if a in prefix and isinstance(t, exp.Table) and t.db in self.silos
        }
        conditions = self._conjuncts(select.args["where"].this if select.args.get("where") else None)
        for join in prefix_joins:
            conditions += self._conjuncts(join.args.get("on"))
        links: dict[str, set[str]] = {a: set() for a in tables}
        for condition in conditions:
            if any(isinstance(n, (exp.Subquery, exp.Select, exp.AggFunc)) for n in condition.walk()):
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

    def _push_join(self, scope: Scope, group: list[str]) -> None:
        select = scope.expression
        tables = {a: scope.sources[a] for a in group}
        silo = tables[group[0]].db
        name = self._next_name()
        members = set(group)

        conditions = self._conjuncts(select.args["where"].this if select.args.get("where") else None)
        for join in select.args.get("joins") or []:
            if join.this.alias_or_name in members or not (join.side or ""):
                conditions += self._conjuncts(join.args.get("on"))
        inside = [
            c for c in conditions
            if {col.table for col in c.find_all(exp.Column)} <= members
            and c.find(exp.Column) is not None
            and not any(isinstance(n, (exp.Subquery, exp.Select, exp.AggFunc)) for n in c.walk())
        ]
        pushed = [c.copy() for c in inside]
        for condition in inside:
            condition.replace(exp.true())
        columns = self._columns_of(scope, members)
        needed = sorted({(c.table, c.name) for c in columns})
        fragment = exp.select(
            *[exp.alias_(exp.column(col, table=alias, quoted=True), f"{alias}__{col}", quoted=True) for alias, col in needed]
            or [exp.alias_(exp.Literal.number(1), "__fl_row", quoted=True)]
        ).from_(exp.Table(this=exp.to_identifier(tables[group[0]].name, quoted=True), alias=exp.TableAlias(this=exp.to_identifier(group[0], quoted=True))))
        for alias in group[1:]:
            fragment = fragment.join(exp.Table(this=exp.to_identifier(tables[alias].name, quoted=True), alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True))), join_type="cross")
        for condition in pushed:
            fragment = fragment.where(condition)
        self.fragments.append(
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
        group_source = exp.Table(this=exp.to_identifier(name, quoted=True), alias=exp.TableAlias(this=exp.to_identifier(name, quoted=True)))
        if select.args["from_"].this.alias_or_name in members:
            select.args["from_"].this.replace(group_source)
        else:
            select.join(group_source, join_type="cross", copy=False)

    # -- partial aggregation through a cross-silo join ------------------------------------------

    @staticmethod
    def _local(select: exp.Select) -> Iterator[exp.Expression]:
        """The nodes of a SELECT itself, not of the queries nested in it."""
        todo = list(select.iter_expressions())
        while todo:
            node = todo.pop()
            if isinstance(node, (exp.Subquery, exp.Query)):
                continue
            yield node
            todo.extend(node.iter_expressions())

    def _pre_aggregate(self, scope: Scope, created: list[tuple[Fragment, str]]) -> None:
        """Eager aggregation: when one fragment's columns are all that the aggregates of an inner-join
        GROUP BY read, the fragment groups its rows by the columns the rest of the query uses
        (join keys, grouping columns) and sends one partial row per group; the residual combines the
        partials (SUM of sums and counts, MIN of minima, AVG as a sum over a count)."""
        select = scope.expression
        if not isinstance(select, exp.Select):
            return
        group = select.args.get("group")
        if group is not None and group.args.get("all"):
            return
        if any((j.side or "") or (j.kind or "").upper() not in ("", "INNER", "CROSS") for j in select.args.get("joins") or []):
            return
        distinct = select.args.get("distinct")
        if distinct is not None and distinct.args.get("on"):
            return
        local = list(self._local(select))
        if any(isinstance(n, exp.Window) for n in local):
            return
        aggregates = [n for n in local if isinstance(n, exp.AggFunc)]
        if not aggregates or any(isinstance(a.parent, exp.Filter) or a.find(exp.Distinct, exp.Subquery) for a in aggregates):
            return
        pushed = self._pushed_sources(scope)
        if not created and not pushed:
            return
        targets = {alias: [fragment] for fragment, alias in created}
        targets.update(pushed)
        readers = {c.table for a in aggregates for c in a.find_all(exp.Column)} & set(targets)
        if len(readers) != 1:
            return
        alias = readers.pop()
        fragments = targets[alias]
        if any(f.name in self.raw for f in fragments):
            return
        mine, others = [], []
        for a in aggregates:
            tables = {c.table for c in a.find_all(exp.Column)}
            (mine if alias in tables else others).append(a)
        if any({c.table for c in a.find_all(exp.Column)} != {alias} or not isinstance(a, (exp.Sum, exp.Count, exp.Min, exp.Max, exp.Avg)) for a in mine):
            return
        if any(not (isinstance(a, (exp.Min, exp.Max)) or (isinstance(a, exp.Count) and isinstance(a.this, exp.Star))) for a in others):
            return
        inside = {id(c) for a in mine for c in a.find_all(exp.Column)}
        keys = sorted({c.name for c in self._columns_of(scope, {alias}) if id(c) not in inside})
        if not keys:
            return

        # the residual combines partials; `partials` are the aggregates each fragment computes
        partials: dict[str, exp.Expression] = {}
        named: dict[str, str] = {}

        def partial(expression: exp.Expression) -> exp.Column:
            text = expression.sql("duckdb")
            if text not in named:
                named[text] = f"__p{len(partials)}"
                partials[named[text]] = expression.copy()
            return exp.column(named[text], table=alias, quoted=True)

        def total(column: exp.Expression) -> exp.Expression:
            return exp.Coalesce(this=exp.Cast(this=exp.Sum(this=column), to=exp.DataType.build("BIGINT")), expressions=[exp.Literal.number(0)])

        own = {id(a) for a in mine}
        kinds = []
        for a in aggregates:
            if isinstance(a, exp.Count) and isinstance(a.this, exp.Star):
                a.replace(total(exp.column("__n", table=alias, quoted=True)))
                kinds.append("COUNT(*)")
            elif id(a) not in own:
                continue
            elif isinstance(a, exp.Count):
                a.replace(total(partial(exp.Count(this=a.this.copy()))))
                kinds.append("COUNT")
            elif isinstance(a, exp.Avg):
                sums = partial(exp.Sum(this=a.this.copy()))
                counts = partial(exp.Count(this=a.this.copy()))
                a.replace(exp.Div(this=exp.Cast(this=exp.Sum(this=sums), to=exp.DataType.build("DOUBLE")),
                                  expression=exp.Nullif(this=exp.Sum(this=counts), expression=exp.Literal.number(0))))
                kinds.append("AVG as SUM and COUNT")
            else:
                a.replace(type(a)(this=partial(type(a)(this=a.this.copy()))))
                kinds.append(type(a).__name__.upper())
        described = f"{', '.join(dict.fromkeys(kinds))} per {', '.join(keys)}"
        # a pushed source's columns are named by its first branch, by position in the others
        names = sqlglot.parse_one(fragments[0].sql, read="duckdb").named_selects if alias in pushed else None
        for fragment in fragments:
            self._aggregate_fragment(fragment, keys, partials, names)
            fragment.partial = described

    def _pushed_sources(self, scope: Scope) -> dict[str, list[Fragment]]:
        """Sources of a scope that are parts pushed whole into silos (a derived table or a CTE, or a
        UNION ALL of them, each now `SELECT * FROM` its fragment), read by this scope alone:
        {alias: the fragments, in branch order}."""
        found = {}
        by_name = {f.name: f for f in self.fragments}
        ctes = {cte.alias_or_name: cte for cte in self.root.find_all(exp.CTE)}
        select = scope.expression
        sources = [select.args["from_"].this] if select.args.get("from_") else []
        sources += [join.this for join in select.args.get("joins") or []]
        for node in sources:  # as they stand now, after the parts below were cut
            alias = node.alias_or_name
            if isinstance(node, exp.Subquery):
                named, body = node, node.this
            elif isinstance(node, exp.Table) and not node.db and node.name in ctes:
                if sum(t.name == node.name and not t.db for t in self.root.find_all(exp.Table)) != 1:
                    continue  # a CTE read elsewhere too: the others would see partials
                named, body = ctes[node.name], ctes[node.name].this
            else:
                continue
            if named.args.get("alias") is not None and named.args["alias"].columns:
                continue  # columns renamed by the alias: not the names of its first branch
            branches, todo = [], [body]
            while todo:
                part = todo.pop(0)
                if isinstance(part, exp.Union):
                    if part.args.get("distinct"):
                        branches = []
                        break
                    todo[:0] = [part.left, part.right]
                elif (
                    isinstance(part, exp.Select) and len(part.expressions) == 1 and isinstance(part.expressions[0], exp.Star)
                    and isinstance(part.args.get("from_") and part.args["from_"].this, exp.Table)
                    and not part.args.get("joins") and not part.args.get("where")
                    and part.args["from_"].this.name in by_name and by_name[part.args["from_"].this.name].kind == "pushed"
                    and not part.args.get("group") and not part.args.get("limit")
                ):
                    branches.append(by_name[part.args["from_"].this.name])
                else:
                    branches = []
                    break
            # a part that already groups its rows gains nothing from grouping them again
            if branches and not any(self._groups(f) for f in branches):
                found[alias] = branches
        return found

    @staticmethod
    def _groups(fragment: Fragment) -> bool:
        query = sqlglot.parse_one(fragment.sql, read="duckdb")
        return not isinstance(query, exp.Select) or bool(query.args.get("group") or query.args.get("distinct")) or any(
            p.find(exp.AggFunc) for p in query.expressions
        )

    @staticmethod
    def _aggregate_fragment(
        fragment: Fragment, keys: list[str], partials: dict[str, exp.Expression], union_names: list[str] | None
    ) -> None:
        """Rewrite a fragment to send its partial aggregates per key instead of its rows. A scan or a
        join aggregates its own expressions over the same FROM, joins and filters (so the gate still
        sees the tables read); a UNION branch aggregates its result, its columns named by position."""
        query = sqlglot.parse_one(fragment.sql, read="duckdb")
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
        fragment.sql = query.sql("duckdb")

    # -- the walk -------------------------------------------------------------------------------

    def cut(self, scope: Scope) -> None:
        silo = self._pushable(scope)
        if silo is not None:
            self._push_whole(scope, silo)
            return
        children = [
            *scope.cte_scopes,
            *scope.derived_table_scopes,
            *scope.subquery_scopes,
            *scope.set_operation_scopes,
            *scope.udtf_scopes,
        ]
        for child in children:
            self.cut(child)
        joined: set[str] = set()
        created: list[tuple[Fragment, str]] = []
        for group in self._join_groups(scope):
            self._push_join(scope, group)
            joined.update(group)
            created.append((self.fragments[-1], self.fragments[-1].name))
        for alias, source in list(scope.sources.items()):
            if alias not in joined and isinstance(source, exp.Table) and source.db in self.silos:
                self._scan(scope, alias, source)
                created.append((self.fragments[-1], alias))
        self._pre_aggregate(scope, created)


def cut_query(
    sql: str, schema: dict[str, dict[str, dict[str, str]]], silos: set[str] | None = None, raw: set[str] = frozenset()
) -> Cut:
    """Qualify `sql` against {silo: {table: {column: type}}} and cut it into fragments (those named
    in `raw` send their rows, not partial aggregates: fragment names are the same from cut to cut)."""
    silos = set(silos or schema)
    tree = qualify_query(sql, schema, silos)
    qualified = tree.sql("duckdb")
    root = build_scope(tree)
    if root is None:
        raise PlanningError("cannot analyse the query's scopes")
    cutter = _Cutter(tree, silos, set(raw))
    cutter.cut(root)
    leftover = [t.sql() for t in cutter.root.find_all(exp.Table) if t.db in silos]
    if leftover:
        raise PlanningError(f"could not place {', '.join(leftover)} in any fragment")
    return Cut(sql=qualified, residual=cutter.root.sql("duckdb"), fragments=cutter.fragments)
