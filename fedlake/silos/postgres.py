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

Connections are lent from small per-role sets (pg_connections), each checked before use, so that
concurrent fragments do not queue on one connection and the first request after a server restart
reconnects instead of failing. A read that loses its connection mid-statement runs once more on a
fresh one (it has no effects); a write never runs twice. What the silo holds (tables, schemas,
counts, statistics) is cached against catalog version tokens (postgres_catalog, silos.metadata).
"""
from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql as sql_lib
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.numeric import FloatLoader

from fedlake.errors import SiloError
from fedlake.silos.base import (
    Connector,
    MaterializedTable,
    TableStatistics,
    EXACT_DISTINCT_ROWS,
    TableStats,
    distinct_sql,
    duckdb_stream,
    ended_with,
    named_errors,
    silo_table_name,
    stats_from_row,
    stats_sql,
)
from fedlake.silos.metadata import MetadataCache
from fedlake.silos.pg_connections import Connections
from fedlake.silos.postgres_catalog import CatalogEntry, distinct_estimates, read_catalog, schema_holds
from fedlake.silos.postgres_roles import (
    ANNOTATION_PREFIX,
    EMBEDDED_READER,
    EMBEDDED_WRITER,
    MADE_SCHEMA,
    dsn_user,
    embedded_dsn,
    embedded_roles,
    ensure_roles,
    with_user,
)
from fedlake.silos.postgres_engines import (
    AttachedDatabase,
    describe,
    pg_type,
    plain_type,
    quote_ident,
    row_cursor_stream,
    to_postgres_sql,
)

# the roles and SQL helpers live in their own modules; these names stay importable from here
__all__ = [
    "EMBEDDED_READER",
    "EMBEDDED_WRITER",
    "MADE_SCHEMA",
    "PostgresConnector",
    "embedded_dsn",
    "embedded_roles",
    "ensure_roles",
    "to_postgres_sql",
    "with_user",
]

STAGING_PREFIX = "_fl_stage_"
CONNECT_TIMEOUT_SECONDS = 10

T = TypeVar("T")


def server_location(dsn: str) -> str:
    """The server and database a DSN reaches, whoever logs in: the connectors of one database
    share the news of each other's writes."""
    params = conninfo_to_dict(dsn)
    return f"postgresql://{params.get('host', '')}:{params.get('port', '')}/{params.get('dbname', '')}"


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
        self._readers = Connections(name, lambda: self._connect(self._dsn))
        self._writers = Connections(name, lambda: self._connect(self._writer_dsn))
        self._metadata: MetadataCache[dict[str, CatalogEntry]] = MetadataCache(server_location(dsn))
        self._attached = AttachedDatabase(name, dsn, self._schemas)

    def _connect(self, dsn: str | None = None) -> psycopg.Connection:
        """A connection that finds source tables first, then made ones (a made table never shadows a source)."""
        try:
            conn = psycopg.connect(
                dsn or self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS, application_name=f"fedlake {self.name}"
            )
        except psycopg.OperationalError as exc:
            raise SiloError(f"silo {self.name}: cannot connect to PostgreSQL: {exc}") from exc
        conn.adapters.register_loader("numeric", FloatLoader)
        conn.execute(f"SET search_path TO {', '.join(quote_ident(s) for s in self._schemas)}")
        return conn

    def _owner(self, doing: str) -> str:
        if not self._owner_dsn:
            raise SiloError(f"silo {self.name}: {doing} needs the data owner's DSN (connection key owner_dsn)")
        return self._owner_dsn

    def _postgres_sql(self, sql: str) -> str:
        try:
            return to_postgres_sql(sql)
        except SiloError as exc:
            raise SiloError(f"silo {self.name}: {exc}") from None

    def ensure_schema(self) -> None:
        """Create the connector's schema if it is missing (the governed zone owns its schema)."""
        conn = self._connect(self._owner("creating its schema"))
        try:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self._schema)}")
        except psycopg.Error as exc:
            raise SiloError(f"silo {self.name}: creating schema {self._schema} failed: {exc}") from exc
        finally:
            conn.close()
        self._metadata.written()

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
        self._metadata.written()

    # -- reading the catalog and the tables ---------------------------------------------------

    def _reading(self, read: Callable[[psycopg.Connection], T]) -> T:
        """`read` on a reader connection. If the server drops the connection under it (a restart
        between the health check and the statement), it runs once more on a fresh connection: a
        read has no effects, so running it again is safe."""
        for attempt in (1, 2):
            with self._readers.connection() as conn:
                try:
                    return read(conn)
                except psycopg.OperationalError as exc:
                    if conn.broken and attempt == 1:
                        continue
                    raise SiloError(f"silo {self.name}: {exc}") from exc
                except psycopg.Error as exc:
                    raise SiloError(f"silo {self.name}: {exc}") from exc
        raise AssertionError("unreachable")

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._reading(lambda conn: conn.execute(sql, params or None).fetchall())

    def _catalog(self) -> dict[str, CatalogEntry]:
        return self._metadata.listing(lambda: self._reading(lambda conn: read_catalog(conn, self._schemas, STAGING_PREFIX)))

    def list_tables(self) -> list[str]:
        """The source tables and the made ones, as one namespace."""
        return sorted(self._catalog())

    def _require(self, table: str) -> CatalogEntry:
        entry = self._catalog().get(table)
        if entry is None:
            raise SiloError(f"silo {self.name}: no table '{table}' (tables: {', '.join(self.list_tables())})")
        return entry

    @staticmethod
    def _qualified(entry: CatalogEntry) -> str:
        return f"{quote_ident(entry.schema)}.{quote_ident(entry.table)}"

    def schema(self, table: str) -> pa.Schema:
        entry = self._require(table)

        def read() -> pa.Schema:
            return self._reading(lambda conn: describe(conn.execute(f"SELECT * FROM {self._qualified(entry)} LIMIT 0")))

        return self._metadata.value(table, entry.structure, "schema", read)

    def row_count(self, table: str) -> int:
        entry = self._require(table)

        def count() -> int:
            return int(self._query(f"SELECT count(*) FROM {self._qualified(entry)}")[0][0])

        return self._metadata.value(table, (entry.structure, entry.data), "rows", count)

    def _table_bytes(self, entry: CatalogEntry) -> int:
        return int(self._query("SELECT pg_total_relation_size(%s::regclass)", (self._qualified(entry),))[0][0])

    def statistics(self, table: str) -> TableStats:
        entry = self._require(table)
        schema = self.schema(table)

        def compute() -> TableStats:
            row = self._query(stats_sql(self._qualified(entry), schema, quote_ident))[0]
            return stats_from_row(table, schema, row, self._table_bytes(entry))

        return self._metadata.value(table, (entry.structure, entry.data), "statistics", compute)

    def column_statistics(self, table: str) -> TableStatistics:
        """PostgreSQL's own statistics (reltuples, pg_stats.n_distinct) once the table was analyzed;
        before that, counted (or, in a large table, estimated) by DuckDB over the attached table."""
        entry = self._require(table)

        def compute() -> TableStatistics:
            if entry.reltuples >= 0:
                distinct = self._reading(lambda conn: distinct_estimates(conn, entry))
                return TableStatistics(rows=round(entry.reltuples), distinct=distinct)
            schema, rows = self.schema(table), self.row_count(table)
            sql = distinct_sql(f"silo.{self._qualified(entry)}", schema, quote_ident, exact=rows <= EXACT_DISTINCT_ROWS)
            cursor = self._attached.cursor()
            try:
                with named_errors(self.name, f"estimating the distinct values of {table}"):
                    row = cursor.execute(sql).fetchone()
            finally:
                cursor.close()
            return TableStatistics(rows=rows, distinct={f.name: int(row[1 + i]) for i, f in enumerate(schema)})

        return self._metadata.value(table, (entry.structure, entry.data), "column_statistics", compute)

    def annotations(self, table: str) -> dict | None:
        entry = self._require(table)

        def read() -> dict | None:
            comment = self._query("SELECT obj_description(%s::regclass, 'pg_class')", (self._qualified(entry),))[0][0]
            if not comment or not comment.startswith(ANNOTATION_PREFIX):
                return None
            return json.loads(comment[len(ANNOTATION_PREFIX) :])

        return self._metadata.value(table, entry.structure, "annotations", read)

    # -- fragments ------------------------------------------------------------------------------

    def estimate_rows(self, sql: str, params: dict | None = None) -> int | None:
        """PostgreSQL's planner estimate from its statistics (DuckDB's scanner of it has none). The
        statement is bound on the client: PostgreSQL takes no parameters for EXPLAIN."""
        try:
            statement = f"EXPLAIN (FORMAT JSON) {self._postgres_sql(sql)}"
            plan = self._reading(lambda conn: psycopg.ClientCursor(conn).execute(statement, params or None).fetchall())[0][0]
            return int(plan[0]["Plan"]["Plan Rows"])
        except (SiloError, KeyError, IndexError, TypeError, ValueError):
            return None

    def _stream(self, sql: str, batch_rows: int, params: dict | None = None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        if self.engine == "duckdb":
            return self._stream_duckdb(sql, batch_rows, params)
        statement = self._postgres_sql(sql)
        # a connection of its own, held as long as the stream is read (a lent one could be held forever)
        conn = self._connect()
        schema, batches = row_cursor_stream(conn, statement, params, batch_rows, self.name)
        return schema, ended_with(batches, conn.close)

    def _stream_duckdb(self, sql: str, batch_rows: int, params: dict | None = None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        reader, close = duckdb_stream(self._attached.cursor(), sql, params, batch_rows, self.name)
        schema = pa.schema([f.with_type(plain_type(f.type)) for f in reader.schema])

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                with named_errors(self.name, "streaming a fragment"):
                    for batch in reader:
                        yield batch if batch.schema.equals(schema) else batch.cast(schema)
            finally:
                close()

        return schema, ended_with(batches(), close)

    # -- writes ---------------------------------------------------------------------------------

    def _replace(self, conn: psycopg.Connection, schema: str, staging: str, table: str) -> None:
        conn.execute(f"DROP TABLE IF EXISTS {quote_ident(schema)}.{quote_ident(table)}")
        conn.execute(f"ALTER TABLE {quote_ident(schema)}.{quote_ident(staging)} RENAME TO {quote_ident(table)}")

    def materialize(self, table: str, sql: str, annotations: dict | None = None, params: dict | None = None) -> MaterializedTable:
        """As the writer, in its schema: a made table may not take the name of a source table. One
        transaction on a connection checked when lent; if the connection fails, the statement is
        not run again (it may have committed): the error says so and names the silo."""
        silo_table_name(self.name, table)
        staging = f"{STAGING_PREFIX}{table}_{uuid.uuid4().hex[:8]}"
        made = quote_ident(self._made)
        statement = f"CREATE TABLE {made}.{quote_ident(staging)} AS {self._postgres_sql(sql)}"
        try:
            with self._writers.connection() as conn:
                with conn.transaction():
                    if self._made != self._schema and schema_holds(conn, self._schema, table):
                        raise SiloError(
                            f"silo {self.name}: '{table}' is a source table of schema {self._schema}; "
                            "a made table may not shadow it"
                        )
                    # CREATE TABLE AS takes no server-side parameters: the keys are bound on the client
                    rows = psycopg.ClientCursor(conn).execute(statement, params or None).rowcount
                    self._replace(conn, self._made, staging, table)
                    if annotations is not None:
                        conn.execute(
                            sql_lib.SQL("COMMENT ON TABLE {}.{} IS {}").format(
                                sql_lib.Identifier(self._made),
                                sql_lib.Identifier(table),
                                sql_lib.Literal(ANNOTATION_PREFIX + json.dumps(annotations)),
                            )
                        )
                # statistics for the planner's estimates and column_statistics, outside the
                # transaction so that readers of the table do not wait for them
                conn.execute(f"ANALYZE {made}.{quote_ident(table)}")
        except psycopg.Error as exc:
            raise SiloError(f"silo {self.name}: materializing {table} failed: {exc}") from exc
        finally:
            self._metadata.written(table)
        entry = self._require(table)
        return MaterializedTable(self.name, table, self.schema(table), rows, self._table_bytes(entry))

    def load(self, table: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
        """The data owner's seeding of a source table, as the owner."""
        silo_table_name(self.name, table)
        staging = f"{STAGING_PREFIX}{table}_{uuid.uuid4().hex[:8]}"
        source = quote_ident(self._schema)
        try:
            columns = ", ".join(f"{quote_ident(f.name)} {pg_type(f.type)}" for f in schema)
        except SiloError as exc:
            raise SiloError(f"silo {self.name}: loading {table}: {exc}") from None
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
            self._metadata.written(table)
        return rows

    def drop(self, table: str) -> None:
        """A made table goes as the writer; a source table only as the owner."""
        silo_table_name(self.name, table)
        try:
            with self._writers.connection() as writer:
                if self._made != self._schema and schema_holds(writer, self._made, table):
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
        except psycopg.Error as exc:
            raise SiloError(f"silo {self.name}: dropping {table} failed: {exc}") from exc
        finally:
            self._metadata.written(table)

    def close(self) -> None:
        self._readers.close()
        self._writers.close()
        self._attached.close()
