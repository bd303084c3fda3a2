"""Fragments in Spark SQL: the agent's statement (DuckDB's dialect, masks included) transpiled by
sqlglot, with the silo's table names pointed at the views of their current files.

sqlglot carries most of DuckDB's dialect over; what it carries by name but Spark spells otherwise
is rewritten here, as the PostgreSQL engine does for its own dialect: the masks' STRLEN (length in
bytes) becomes OCTET_LENGTH. ENCODE, UNHEX, SHA256 and `||` on binary values become Spark's
ENCODE(…, 'utf-8'), UNHEX, SHA2(…, 256) and CONCAT, so a keyed HMAC computed by Spark is the token
DuckDB and Python compute. `$name` parameters become Spark's named parameter markers `:name`.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from fedlake.errors import SiloError


def _spark_functions(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Anonymous) and node.name.lower() == "strlen":
        return exp.func("octet_length", *node.expressions)
    return node


def silo_tables(tree: exp.Expression) -> list[exp.Table]:
    """The references to stored tables: every table that is not one of the statement's CTEs."""
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    return [t for t in tree.find_all(exp.Table) if not (t.name in ctes and not t.args.get("db"))]


def parse_fragment(sql: str, silo: str) -> exp.Expression:
    try:
        return sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise SiloError(f"silo {silo}: cannot parse fragment: {str(exc).splitlines()[0]}") from None


def table_names(tree: exp.Expression) -> set[str]:
    return {t.name for t in silo_tables(tree)}


def to_spark_sql(tree: exp.Expression, views: dict[str, str], silo: str) -> str:
    """The fragment in Spark's dialect, each table the silo holds renamed to its view (`views`:
    table -> view). A table the silo does not hold, or one named with a schema or catalog, is
    refused: a fragment reads its silo's tables and nothing else."""
    tree = tree.copy()
    for table in silo_tables(tree):
        if table.args.get("db") or table.args.get("catalog") or table.name not in views:
            raise SiloError(f"silo {silo}: the fragment names {table.sql('duckdb')}, which is not a table of this silo")
        if not table.alias:
            table.set("alias", exp.TableAlias(this=exp.to_identifier(table.name, quoted=True)))
        table.set("this", exp.to_identifier(views[table.name], quoted=True))
    for node in reversed(list(tree.find_all(exp.Anonymous))):  # innermost first: each where it stands
        node.replace(_spark_functions(node))
    return tree.sql("spark")
