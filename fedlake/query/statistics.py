"""Table statistics as the planner reads them, and what they say about a fragment's columns.

The silos' connectors report, per table, its rows and the distinct values of each column (from
PostgreSQL's pg_stats, DuckDB's and Parquet's distinct estimates). The planner uses them to decide
whether a partial aggregate reduces what crosses (groups far fewer than rows) and to estimate the
rows of a grouped result. A fragment's output column has the distinct count of the table column it
passes through unchanged (renamed, filtered, joined, grouped on); anything computed has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import sqlglot
from sqlglot.errors import ParseError

from fedlake.agent.lineage import DIRECT, LineageError, trace
from fedlake.silos.base import TableStatistics

__all__ = ["ColumnOrigin", "Statistics", "TableStatistics", "column_origins", "fragment_distinct", "group_estimate"]

Statistics = Mapping[str, Mapping[str, TableStatistics]]  # {silo: {table: statistics}}


@dataclass(frozen=True)
class ColumnOrigin:
    table: str
    column: str


def column_origins(sql: str) -> dict[str, ColumnOrigin]:
    """The output columns of a fragment (qualified SQL over its silo's tables) that pass one table
    column through unchanged, with that column."""
    try:
        lineage = trace(sqlglot.parse_one(sql, read="duckdb"))
    except (ParseError, LineageError):
        return {}
    origins = {}
    for column in lineage.columns:
        if len(column.uses) == 1 and column.uses[0].mode == DIRECT:
            use = column.uses[0]
            origins[column.name] = ColumnOrigin(use.table, use.column)
    return origins


def table_rows(statistics: Statistics, silo: str, tables: tuple[str, ...]) -> int | None:
    """The rows of the largest of these tables (what a join along its keys keeps), if all are known."""
    known = [statistics.get(silo, {}).get(table) for table in tables]
    if not known or any(s is None for s in known):
        return None
    return max(s.rows for s in known)


def distinct_values(statistics: Statistics, silo: str, origin: ColumnOrigin) -> int | None:
    table = statistics.get(silo, {}).get(origin.table)
    if table is None:
        return None
    return table.distinct.get(origin.column)


def fragment_distinct(fragments: list, statistics: Statistics) -> dict[str, dict[str, int]]:
    """{fragment name: {output column: distinct values}} for the columns whose table statistics are
    known (`fragments`: the cut's Fragments), for placement's estimate of the residual's rows."""
    found: dict[str, dict[str, int]] = {}
    for fragment in fragments:
        counts = {}
        for name, origin in column_origins(fragment.sql).items():
            n = distinct_values(statistics, fragment.silo, origin)
            if n is not None:
                counts[name] = n
        if counts:
            found[fragment.name] = counts
    return found


def group_estimate(counts: list[int | None], rows: int) -> int | None:
    """Groups of a GROUP BY on keys with these distinct counts, over `rows` rows: their product
    (keys taken as independent), never more than the rows; None if a key's count is unknown."""
    if any(n is None for n in counts):
        return None
    groups = 1
    for n in counts:
        groups *= max(1, n)
        if groups >= rows:
            return rows
    return groups
