"""Where the residual runs: at the governed zone, or in one of the silos it reads, whichever moves
the fewest bytes across silo borders among the sites the policy allows.

At the governed zone every fragment crosses. In silo S the fragments of S stay home, the others go
straight to S's agent, and the residual's result crosses once, from S to the governed zone. So S
wins when its own fragments weigh more than the result. The fragments' sizes are the agents'
estimates; the result's is estimated here from them, through the shape of the residual
(`result_rows`): joins on a key one side is unique on (a GROUP BY key, a DISTINCT) keep the other
side's rows, aggregates without GROUP BY give one row, LIMIT caps, UNION ALL adds, and a GROUP BY
or DISTINCT on columns whose distinct values the tables' statistics count gives at most the product
of those counts (a result of 5 groups is not taken for the 6 million rows it reads).

Policy is part of the choice: a silo is a site only if every other silo may send its fragments
there exactly as it sends them to the governed zone (the caller checks that, for the sites that
would pay, cheapest first). Where the governed zone may not receive one silo's rows at all, that
silo is the only candidate, and its gate must accept the residual's result (see
fedlake.agent.placed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp

from fedlake.query.rules.sql import conjuncts
from fedlake.query.statistics import group_estimate


@dataclass
class Site:
    silo: str | None  # None: the governed zone
    estimated_bytes: int  # bytes crossing silo borders if the residual runs here
    blocked: str = ""  # why the policy rules this site out


def site_costs(fragments: list[tuple[str, int]], result_bytes: int) -> list[Site]:
    """Every candidate site with the bytes it would move, the governed zone first; `fragments` are
    (silo, estimated bytes) per fragment."""
    total = sum(nbytes for _, nbytes in fragments)
    sites = [Site(None, total)]
    for silo in dict.fromkeys(s for s, _ in fragments):
        home = sum(nbytes for s, nbytes in fragments if s == silo)
        sites.append(Site(silo, total - home + result_bytes))
    return sites


def result_bytes(residual: str, schemas: dict[str, pa.Schema], rows: int, width) -> int:
    """The residual's estimated result size: `rows` times the width of its output columns, typed by
    running it over empty fragments."""
    db = duckdb.connect(config={"enable_external_access": False, "autoinstall_known_extensions": False})
    try:
        for name, schema in schemas.items():
            db.register(name, schema.empty_table())
        schema = db.execute(f"SELECT * FROM ({residual}) AS q LIMIT 0").fetch_arrow_table().schema
    finally:
        db.close()
    return rows * sum(width(f.type) for f in schema)


@dataclass
class _Shape:
    rows: int
    unique: frozenset[str]  # output columns no two rows share a non-null value of
    distinct: dict[str, int] = field(default_factory=dict)  # output column -> its distinct values, where known


_Key = tuple[str, str]  # (alias, column) inside a SELECT


class _Cardinality:
    def __init__(self, sources: dict[str, _Shape]):
        self.sources = dict(sources)
        self.unknown = max((s.rows for s in sources.values()), default=1)

    def query(self, node: exp.Expression) -> _Shape:
        with_ = node.args.get("with_")
        if with_ is not None:
            for cte in with_.expressions:
                self.sources[cte.alias_or_name] = self.query(cte.this)
        if isinstance(node, exp.Subquery):
            return self.query(node.this)
        if isinstance(node, exp.Union):
            return _Shape(_limited(node, self.query(node.left).rows + self.query(node.right).rows), frozenset())
        if isinstance(node, (exp.Intersect, exp.Except)):
            return _Shape(_limited(node, self.query(node.left).rows), frozenset())
        if isinstance(node, exp.Select):
            return self.select(node)
        return _Shape(self.unknown, frozenset())

    def source(self, node: exp.Expression) -> _Shape:
        if isinstance(node, exp.Table):
            return self.sources.get(node.name, _Shape(self.unknown, frozenset()))
        if isinstance(node, (exp.Subquery, exp.Query)):
            return self.query(node)
        return _Shape(self.unknown, frozenset())

    def select(self, select: exp.Select) -> _Shape:
        from_ = select.args.get("from_")
        distinct: dict[_Key, int] = {}
        if from_ is None:
            rows, unique = 1, set()
        else:
            base = self.source(from_.this)
            alias = from_.this.alias_or_name
            rows, unique = base.rows, {(alias, c) for c in base.unique}
            distinct = {(alias, c): n for c, n in base.distinct.items()}
        where = select.args.get("where")
        terms = conjuncts(where.this) if where is not None else []
        for join in select.args.get("joins") or []:
            rows, unique = self._join(rows, unique, join, terms)
            distinct.update({(join.this.alias_or_name, c): n for c, n in self.source(join.this).distinct.items()})
        outputs = {p.alias_or_name: p.unalias() for p in select.expressions}
        group = select.args.get("group")
        if group is not None:
            keys = self._group_expressions(group, outputs)
            out = frozenset(self._group_keys(keys, outputs))
            rows = _grouped(rows, [self._distinct_of(k, distinct) for k in keys])
        elif any(e.find(exp.AggFunc) and not e.find(exp.Window) for e in outputs.values()):
            rows, out = 1, frozenset(outputs)
        else:
            out = frozenset(
                name for name, e in outputs.items() if isinstance(e, exp.Column) and (e.table, e.name) in unique
            )
            if any(isinstance(e, exp.Star) for e in outputs.values()):
                out |= frozenset(c for _, c in unique)
        if select.args.get("distinct") is not None:
            if len(outputs) == 1:
                out = frozenset(outputs)
            if not any(isinstance(e, exp.Star) for e in outputs.values()):
                rows = _grouped(rows, [self._distinct_of(e, distinct) for e in outputs.values()])
        rows = _limited(select, rows)
        return _Shape(rows, out, self._output_distinct(outputs, distinct, rows))

    @staticmethod
    def _distinct_of(expression: exp.Expression, distinct: dict[_Key, int]) -> int | None:
        """The distinct values of a plain column of a source, where its statistics are known."""
        if not isinstance(expression, exp.Column):
            return None
        if expression.table:
            return distinct.get((expression.table, expression.name))
        matches = [n for (_, c), n in distinct.items() if c == expression.name]
        return matches[0] if len(matches) == 1 else None

    def _output_distinct(self, outputs: dict[str, exp.Expression], distinct: dict[_Key, int], rows: int) -> dict[str, int]:
        found = {}
        for name, e in outputs.items():
            if isinstance(e, exp.Star):
                found.update({c: min(n, rows) for (_, c), n in distinct.items()})
            elif (n := self._distinct_of(e, distinct)) is not None:
                found[name] = min(n, rows)
        return found

    @staticmethod
    def _group_expressions(group: exp.Group, outputs: dict[str, exp.Expression]) -> list[exp.Expression]:
        """The expressions a GROUP BY groups on, ordinals and GROUP BY ALL resolved to outputs."""
        listed = list(outputs.values())
        if group.args.get("all"):
            return [e for e in listed if not e.find(exp.AggFunc)]
        return [listed[int(k.this) - 1] if isinstance(k, exp.Literal) and k.is_int and 0 < int(k.this) <= len(listed)
                else k for k in group.expressions]

    @staticmethod
    def _group_keys(keys: list[exp.Expression], outputs: dict[str, exp.Expression]) -> list[str]:
        """The output column a GROUP BY on one key makes unique (none for several keys)."""
        if len(keys) != 1:
            return []
        key = keys[0]
        return [name for name, e in outputs.items() if e == key or (isinstance(key, exp.Column) and not key.table and name == key.name)]

    def _join(
        self, rows: int, unique: set[tuple[str, str]], join: exp.Join, where: list[exp.Expression]
    ) -> tuple[int, set[tuple[str, str]]]:
        """Rows after one more join; its equalities may stand in ON or, for a comma or CROSS JOIN, in WHERE."""
        alias = join.this.alias_or_name
        other = self.source(join.this)
        on = join.args.get("on")
        pairs = []
        for term in conjuncts(on) + ([] if join.args.get("side") else where):
            a, b = (term.left, term.right) if isinstance(term, exp.EQ) else (None, None)
            if isinstance(a, exp.Column) and isinstance(b, exp.Column) and a.table != b.table:
                pairs += [(b, a)] if a.table == alias else [(a, b)] if b.table == alias else []
        if not pairs and on is None and not join.args.get("using"):
            return rows * other.rows, set()
        right_unique = any(r.name in other.unique for _, r in pairs) or any(
            u.name in other.unique for u in join.args.get("using") or []
        )
        left_unique = any((left.table, left.name) in unique for left, _ in pairs)
        side = join.args.get("side") or ""
        if right_unique:
            return rows, unique
        theirs = {(alias, c) for c in other.unique}
        if left_unique:
            return (other.rows if side.upper() in ("", "RIGHT") else max(rows, other.rows)), theirs
        return max(rows, other.rows), set()


def _grouped(rows: int, counts: list[int | None]) -> int:
    """Rows after grouping on keys with these distinct counts (all rows where one is unknown)."""
    if not counts:
        return min(rows, 1)
    groups = group_estimate(counts, rows)
    return rows if groups is None else groups


def _limited(node: exp.Expression, rows: int) -> int:
    limit = node.args.get("limit")
    if limit is not None and isinstance(limit.expression, exp.Literal) and limit.expression.is_int:
        return min(rows, int(limit.expression.this))
    return rows


def unique_columns(sql: str) -> frozenset[str]:
    """The output columns of a query that no two rows share (as far as its shape tells)."""
    return _Cardinality({}).query(sqlglot.parse_one(sql, read="duckdb")).unique


def result_rows(
    residual: str, fragments: dict[str, tuple[int, frozenset[str]]], distinct: dict[str, dict[str, int]] | None = None
) -> int:
    """The residual's estimated rows, from each fragment's (estimated rows, unique columns) and,
    where the tables' statistics give them, the distinct values of its columns ({fragment:
    {column: n}}, see `fedlake.query.statistics.fragment_distinct`): a GROUP BY or DISTINCT on
    columns whose distinct counts are known has at most their product of rows."""
    distinct = distinct or {}
    sources = {
        name: _Shape(rows, unique, {c: min(n, rows) for c, n in distinct.get(name, {}).items()})
        for name, (rows, unique) in fragments.items()
    }
    return _Cardinality(sources).query(sqlglot.parse_one(residual, read="duckdb")).rows
