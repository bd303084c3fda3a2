"""What a PostgreSQL silo holds, read from its system catalog in one statement: each table the
reader may select from, the schema it is found in, and two version tokens.

`structure` changes with any DDL on the table: a replaced table has a new oid; ALTER, TRUNCATE and
RENAME rewrite its pg_class row (a new xmin); column renames and drops rewrite pg_attribute rows; a
new COMMENT (fedlake's annotations) rewrites its pg_description row. `data` changes when rows are
written, as PostgreSQL's cumulative statistics count them, and when the table is analyzed. Those
counters reach other sessions when the writing session flushes them, within about a second, which is
why counts of a table written by another process may lag by as much; fedlake's own writes replace
the table (a new oid) and are seen at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

CATALOG_SQL = """
SELECT c.relname, n.nspname, c.oid::bigint, c.xmin::text,
       (SELECT max(a.xmin::text::bigint) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0),
       (SELECT d.xmin::text FROM pg_description d
         WHERE d.objoid = c.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0),
       c.reltuples,
       pg_stat_get_tuples_inserted(c.oid), pg_stat_get_tuples_deleted(c.oid),
       pg_stat_get_analyze_count(c.oid) + pg_stat_get_autoanalyze_count(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND has_table_privilege(c.oid, 'SELECT')
"""

# Per column, prefer the statistics over a table and its children (what a SELECT on it reads).
DISTINCT_SQL = """
SELECT DISTINCT ON (attname) attname, n_distinct FROM pg_stats
WHERE schemaname = %s AND tablename = %s ORDER BY attname, inherited DESC
"""


@dataclass(frozen=True)
class CatalogEntry:
    table: str
    schema: str  # the first schema on the connector's search path that holds it
    structure: tuple
    data: tuple
    reltuples: float  # the planner's row estimate; negative until the table is first analyzed


def read_catalog(conn: psycopg.Connection, schemas: list[str], hidden_prefix: str) -> dict[str, CatalogEntry]:
    """The tables of `schemas`, by name; a name in two schemas is the first schema's (the search
    path's order, so a made table never shadows a source table); names with `hidden_prefix` (the
    staging tables of materializations in progress) are left out."""
    rows = conn.execute(CATALOG_SQL, (schemas,)).fetchall()
    entries: dict[str, CatalogEntry] = {}
    for relname, nspname, oid, xmin, columns_xmin, comment_xmin, reltuples, inserted, deleted, analyzed in sorted(
        rows, key=lambda r: (schemas.index(r[1]), r[0])
    ):
        if relname.startswith(hidden_prefix) or relname in entries:
            continue
        entries[relname] = CatalogEntry(
            table=relname,
            schema=nspname,
            structure=(oid, xmin, columns_xmin, comment_xmin),
            data=(inserted, deleted, reltuples, analyzed),
            reltuples=float(reltuples),
        )
    return entries


def distinct_estimates(conn: psycopg.Connection, entry: CatalogEntry) -> dict[str, int]:
    """pg_stats.n_distinct per analyzed column: a count when positive, minus a fraction of the rows
    when negative (-1: every value distinct)."""
    rows = max(entry.reltuples, 0.0)
    estimates = {}
    for column, n_distinct in conn.execute(DISTINCT_SQL, (entry.schema, entry.table)).fetchall():
        n = float(n_distinct)
        estimates[column] = round(n if n >= 0 else -n * rows)
    return estimates


def schema_holds(conn: psycopg.Connection, schema: str, table: str) -> bool:
    """Whether the schema holds the table, whoever may read it (pg_class is visible to every role)."""
    return conn.execute(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (schema, table),
    ).fetchone() is not None
