"""PostgreSQL's side of a fragment: Arrow types for its type OIDs and back, and DuckDB's SQL
dialect transpiled to PostgreSQL's (for `engine: postgres` and for materialization)."""

from __future__ import annotations

import pyarrow as pa
import sqlglot
from sqlglot import exp

from fedlake.errors import SiloError

# PostgreSQL type OIDs -> Arrow types; anything else travels as text.
ARROW_BY_OID = {
    16: pa.bool_(),
    20: pa.int64(),
    21: pa.int16(),
    23: pa.int32(),
    26: pa.int64(),
    700: pa.float32(),
    701: pa.float64(),
    1700: pa.float64(),
    25: pa.string(),
    1043: pa.string(),
    1042: pa.string(),
    18: pa.string(),
    19: pa.string(),
    1082: pa.date32(),
    1114: pa.timestamp("us"),
    1184: pa.timestamp("us", tz="UTC"),
}


def plain_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type the silo reports for a value, whichever engine computed it: PostgreSQL's
    numerics arrive as doubles, as they do from the row cursor."""
    if pa.types.is_decimal(t):
        return pa.float64()
    return t


def pg_type(t: pa.DataType) -> str:
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_int8(t) or pa.types.is_int16(t):
        return "smallint"
    if pa.types.is_int32(t):
        return "integer"
    if pa.types.is_integer(t):
        return "bigint"
    if pa.types.is_float32(t):
        return "real"
    if pa.types.is_floating(t):
        return "double precision"
    if pa.types.is_decimal(t):
        return f"numeric({t.precision},{t.scale})"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    raise SiloError(f"no PostgreSQL type for Arrow type {t}")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _postgres_functions(node: exp.Expression) -> exp.Expression:
    """DuckDB functions sqlglot carries over by name but PostgreSQL spells otherwise: the masks'
    UNHEX (bytes from hex), ENCODE (text to UTF-8 bytes) and STRLEN (length in bytes)."""
    if isinstance(node, exp.Anonymous) and node.name.lower() == "strlen":
        return exp.func("octet_length", *node.expressions)
    if isinstance(node, exp.Unhex):
        return exp.func("decode", node.this, exp.Literal.string("hex"))
    if isinstance(node, exp.Encode) and node.text("charset").lower() in ("", "utf-8", "utf8"):
        return exp.func("convert_to", node.this, exp.Literal.string("UTF8"))
    return node


def to_postgres_sql(sql: str) -> str:
    """DuckDB dialect in, PostgreSQL dialect out; `$name` parameters become psycopg's `%(name)s`."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
        for node in reversed(list(tree.find_all(exp.Unhex, exp.Encode, exp.Anonymous))):  # innermost first: each where it stands
            node.replace(_postgres_functions(node))
        return tree.sql("postgres")
    except sqlglot.errors.ParseError as exc:
        raise SiloError(f"cannot parse fragment: {exc}") from exc

