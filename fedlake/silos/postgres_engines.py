"""The two engines a PostgreSQL silo runs fragments on: the agent's DuckDB with the database
attached read-only (`engine: duckdb`), or PostgreSQL itself (`engine: postgres`), the fragment
transpiled by sqlglot and read through a server-side cursor; and the Arrow types of both."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import duckdb
import duckdb_extensions
import psycopg
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



def describe(cursor: psycopg.Cursor) -> pa.Schema:
    return pa.schema([(d.name, ARROW_BY_OID.get(d.type_code, pa.string())) for d in cursor.description])


def row_cursor_stream(
    conn: psycopg.Connection, statement: str, params: dict | None, batch_rows: int, silo: str
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """`statement` (PostgreSQL's dialect) through a server-side cursor on `conn`, a connection the
    stream owns and closes when it ends."""
    conn.autocommit = False
    cursor = conn.cursor(name=f"fl_{uuid.uuid4().hex[:12]}")
    try:
        cursor.execute(statement, params or None)
        first = cursor.fetchmany(batch_rows)
    except psycopg.Error as exc:
        conn.close()
        raise SiloError(f"silo {silo}: {exc}") from exc
    schema = describe(cursor)

    def to_batch(rows: list[tuple]) -> pa.RecordBatch:
        columns = [pa.array([r[i] for r in rows], type=f.type) for i, f in enumerate(schema)]
        return pa.RecordBatch.from_arrays(columns, schema=schema)

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            rows = first
            while rows:
                yield to_batch(rows)
                rows = cursor.fetchmany(batch_rows)
        except psycopg.Error as exc:
            raise SiloError(f"silo {silo}: streaming a fragment failed: {exc}") from exc
        finally:
            conn.close()

    return schema, batches()


class AttachedDatabase:
    """The agent's DuckDB with the silo's database attached read-only (as the reader), opened on
    first use. DuckDB's postgres extension reconnects by itself after a server restart."""

    def __init__(self, silo: str, dsn: str, schemas: list[str]):
        self._silo = silo
        self._dsn = dsn
        self._schemas = schemas
        self._db: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor with the source schema, then the made one, on its search path."""
        with self._lock:
            if self._db is None:
                self._db = self._open()
            cursor = self._db.cursor()
        path = ",".join(f"silo.{quote_ident(s)}" for s in self._schemas).replace("'", "''")
        cursor.execute(f"SET search_path = '{path}'")
        return cursor

    def _open(self) -> duckdb.DuckDBPyConnection:
        db = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
        duckdb_extensions.import_extension("postgres", con=db)
        db.execute("LOAD postgres")
        # tables fedlake creates in the silo become visible to the next fragment
        db.execute("SET pg_staleness_query_enabled = true")
        dsn = self._dsn.replace("'", "''")
        try:
            db.execute(f"ATTACH '{dsn}' AS silo (TYPE postgres, READ_ONLY)")
        except duckdb.Error as exc:
            db.close()
            raise SiloError(f"silo {self._silo}: cannot attach PostgreSQL: {exc}") from exc
        return db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
