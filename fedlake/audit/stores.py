"""Where the ledger's table lives: a DuckDB file (the local governed zone) or a PostgreSQL schema
(prod). A store gives reads, and one transaction that no other append can interleave with, from
this process or another; SQL is written with `?` placeholders and `{table}`."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from fedlake.audit.budget import Run
from fedlake.audit.entry import LEGACY_CHAIN, STORED

TABLE_COLUMNS = (
    "seq BIGINT PRIMARY KEY, recorded_at TEXT NOT NULL, requester TEXT NOT NULL, purpose TEXT NOT NULL, silo TEXT NOT NULL, "
    "destination TEXT NOT NULL, operation TEXT NOT NULL, fragment_sha256 TEXT NOT NULL, columns TEXT NOT NULL, "
    "decision TEXT NOT NULL, rows BIGINT NOT NULL, bytes BIGINT NOT NULL, prev_hash TEXT NOT NULL, entry_hash TEXT NOT NULL, "
    "chain TEXT NOT NULL, chain_seq BIGINT NOT NULL, epsilon DOUBLE PRECISION NOT NULL DEFAULT 0, "
    "delta DOUBLE PRECISION NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '', signature TEXT NOT NULL DEFAULT ''"
)
# what a ledger made before chains, budgets, errors and signatures lacks: added in place
_MIGRATION = (
    f"ALTER TABLE {{table}} ADD COLUMN IF NOT EXISTS chain TEXT DEFAULT '{LEGACY_CHAIN}'",
    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS chain_seq BIGINT",
    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS epsilon DOUBLE PRECISION DEFAULT 0",
    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS delta DOUBLE PRECISION DEFAULT 0",
    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS error TEXT DEFAULT ''",
    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS signature TEXT DEFAULT ''",
    "UPDATE {table} SET chain_seq = seq WHERE chain_seq IS NULL",
)
_CHAIN_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {table} (chain, chain_seq)"
_LOCK_WAIT_SECONDS = 60  # how long an append waits for another process to let go of a DuckDB file


class Store(ABC):
    """The ledger's table in one database; `key` names it, so that every ledger of this process on
    the same table shares one group commit. Where `keeps_connection`, a transaction keeps its
    connection for the next one until `let_go` (appends that follow each other connect once);
    reads connect apart."""

    key: tuple[str, ...]
    keeps_connection = True
    _held = None  # the connection of the last transaction, until let go

    @abstractmethod
    def _connect(self):
        """A new connection, the table created or brought up to date."""

    @abstractmethod
    def _begin(self, connection) -> Run:
        """Start the exclusive transaction on the connection; how to run SQL in it."""

    @abstractmethod
    def read(self, sql: str, params: list[Any]) -> list[tuple]:
        """One read outside any append."""

    @contextmanager
    def transaction(self) -> Iterator[Run]:
        """One exclusive transaction: committed (durably) when the block ends, rolled back if it raises."""
        connection, run = self._started()
        try:
            yield run
            connection.execute("COMMIT")
        except BaseException:
            connection.close()  # closing without COMMIT rolls back; a broken connection is not kept
            raise
        if self.keeps_connection:
            self._held = connection
        else:
            connection.close()

    def _started(self) -> tuple[Any, Run]:
        """A connection in its exclusive transaction: the kept one, or, if it has gone stale (a
        server restarted since), a new one; nothing was written on the stale one."""
        kept, self._held = self._held, None
        if kept is not None:
            try:
                return kept, self._begin(kept)
            except Exception:  # noqa: BLE001 - whatever broke it, a new connection is the answer
                kept.close()
        connection = self._connect()
        try:
            return connection, self._begin(connection)
        except BaseException:
            connection.close()
            raise

    def let_go(self) -> None:
        """Close the connection kept from the last transaction (no append is waiting)."""
        connection, self._held = self._held, None
        if connection is not None:
            connection.close()

    def forget(self):
        """Drop the kept connection without closing it (it is a forked parent's); returns it."""
        connection, self._held = self._held, None
        return connection


class DuckDBStore(Store):
    """A DuckDB file, opened per transaction so that several processes (Dagster steps, agents) can
    take turns; a process that finds it locked waits for its turn. (A connection kept open would
    lock the file for other processes while appends go on, and DuckDB's in-process instance would
    outlive a fork, letting a child write through its parent's stale copy.)"""

    keeps_connection = False
    _ready: set[Path] = set()  # files brought up to date by this process
    # DuckDB's cache of open databases races when two threads of one process open the same file at
    # once ("Unique file handle conflict"): opening is serialised, using the connections is not.
    _opening = threading.Lock()

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.key = ("duckdb", str(self.path))

    def _connect(self):
        import duckdb

        deadline = time.monotonic() + _LOCK_WAIT_SECONDS
        while True:
            try:
                with DuckDBStore._opening:
                    db = duckdb.connect(str(self.path))
                    if self.path not in DuckDBStore._ready:
                        db.execute(f"CREATE TABLE IF NOT EXISTS audit_ledger ({TABLE_COLUMNS})")
                        self._prepare(db)
                return db
            except duckdb.IOException as exc:  # another process holds the file: wait for our turn
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _prepare(self, db) -> None:
        """Bring a table made by an older fedlake up to date (checked once per process)."""
        have = {r[0] for r in db.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'audit_ledger'").fetchall()}
        if not set(STORED) <= have:
            db.execute("BEGIN TRANSACTION")
            for statement in _MIGRATION:
                db.execute(statement.format(table="audit_ledger"))
            db.execute("COMMIT")
        db.execute(_CHAIN_INDEX.format(index="audit_ledger_chain_seq", table="audit_ledger"))
        DuckDBStore._ready.add(self.path)

    def _begin(self, db) -> Run:
        db.execute("BEGIN TRANSACTION")
        return lambda sql, params: db.execute(sql.format(table="audit_ledger"), params).fetchall()

    def read(self, sql: str, params: list[Any]) -> list[tuple]:
        db = self._connect()
        try:
            return db.execute(sql.format(table="audit_ledger"), params).fetchall()
        finally:
            db.close()


class PostgresStore(Store):
    """A PostgreSQL table, appended under a table lock so that agents in separate processes chain
    their entries in one order."""

    _ready: set[tuple[str, str]] = set()  # (dsn, schema) brought up to date by this process
    _ready_guard = threading.Lock()

    def __init__(self, dsn: str, schema: str = "fedlake_audit"):
        self.dsn = dsn
        self.schema = schema
        self.table = f'"{schema}".audit_ledger'
        self.key = ("postgres", dsn, schema)

    def _connect(self):
        import psycopg

        conn = psycopg.connect(self.dsn, autocommit=True)
        if (self.dsn, self.schema) not in PostgresStore._ready:
            errors = psycopg.errors
            try:
                self._prepare(conn)
            except (errors.UniqueViolation, errors.DuplicateObject, errors.DuplicateTable, errors.DuplicateSchema):
                self._prepare(conn)  # another process created it at the same moment: now it is there
        return conn

    def _prepare(self, conn) -> None:
        """Create the table, or bring one made by an older fedlake up to date (once per process).
        Under an advisory lock: PostgreSQL's IF NOT EXISTS races when several agents start at once
        on a fresh ledger (a duplicate key in pg_class)."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('fedlake.audit_ledger'))")
            self._create(conn)
        with PostgresStore._ready_guard:
            PostgresStore._ready.add((self.dsn, self.schema))

    def _create(self, conn) -> None:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table} ({TABLE_COLUMNS})")
        have = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = 'audit_ledger'", [self.schema])}
        if not set(STORED) <= have:
            with conn.transaction():
                conn.execute(f"LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE")
                for statement in _MIGRATION:
                    conn.execute(statement.format(table=self.table))
        conn.execute(_CHAIN_INDEX.format(index="audit_ledger_chain_seq", table=self.table))

    def _sql(self, sql: str) -> str:
        return sql.format(table=self.table).replace("?", "%s")

    def _begin(self, conn) -> Run:
        conn.execute("BEGIN")
        conn.execute(f"LOCK TABLE {self.table} IN EXCLUSIVE MODE")
        return lambda sql, params: _fetch(conn.execute(self._sql(sql), params))

    def read(self, sql: str, params: list[Any]) -> list[tuple]:
        with self._connect() as conn:
            return _fetch(conn.execute(self._sql(sql), params))


def _fetch(cursor) -> list[tuple]:
    return cursor.fetchall() if cursor.description else []
