"""The audit ledger: an append-only, hash-chained record of every egress decision.

Each entry holds who asked, for what purpose, from which silo to which region, a hash of the
fragment, the decision for every output column, and the rows and bytes that left, plus the hash of
the previous entry. Changing any byte of any entry breaks the chain from that entry on, and
`verify` names the first entry that no longer matches.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
FIELDS = ("seq", "recorded_at", "requester", "purpose", "silo", "destination", "operation", "fragment_sha256", "columns", "decision", "rows", "bytes", "prev_hash")


def entry_hash(entry: dict[str, Any]) -> str:
    canonical = json.dumps({k: entry[k] for k in FIELDS}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def fragment_hash(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    first_broken: int | None = None
    reason: str = ""

    def __str__(self) -> str:
        if self.ok:
            return f"audit ledger intact: {self.entries} entries, hash chain verified"
        return f"audit ledger BROKEN at entry {self.first_broken}: {self.reason} ({self.entries} entries)"


class Ledger(ABC):
    """Append and verify; storage is DuckDB (local governed zone) or PostgreSQL (prod)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def record(
        self,
        *,
        requester: str,
        purpose: str,
        silo: str,
        destination: str,
        operation: str,
        fragment: str,
        columns: list[dict[str, Any]],
        decision: str,
        rows: int = 0,
        nbytes: int = 0,
    ) -> int:
        """Append one entry, chained to the last; returns its sequence number."""
        entry = {
            "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
            "requester": requester,
            "purpose": purpose,
            "silo": silo,
            "destination": destination,
            "operation": operation,
            "fragment_sha256": fragment_hash(fragment),
            "columns": json.dumps(columns, sort_keys=True),
            "decision": decision,
            "rows": int(rows),
            "bytes": int(nbytes),
        }
        with self._lock:
            return self._append(entry)

    @abstractmethod
    def _append(self, entry: dict[str, Any]) -> int:
        """Atomically: read the last entry's hash, chain the new entry to it, insert it."""

    @abstractmethod
    def entries(self, after: int = 0) -> list[dict[str, Any]]:
        """The entries with a sequence number above `after`, in order."""

    @abstractmethod
    def last_seq(self) -> int:
        """The sequence number of the last entry (0 when empty)."""

    def verify(self) -> Verification:
        previous = GENESIS
        entries = self.entries()
        for expected_seq, entry in enumerate(entries, start=1):
            if entry["seq"] != expected_seq:
                return Verification(False, len(entries), expected_seq, f"entry {expected_seq} is missing")
            if entry["prev_hash"] != previous:
                return Verification(False, len(entries), entry["seq"], "does not chain to the entry before it")
            if entry_hash(entry) != entry["entry_hash"]:
                return Verification(False, len(entries), entry["seq"], "its content no longer matches its hash")
            previous = entry["entry_hash"]
        return Verification(True, len(entries))


_COLUMNS_SQL = (
    "seq BIGINT PRIMARY KEY, recorded_at TEXT NOT NULL, requester TEXT NOT NULL, purpose TEXT NOT NULL, silo TEXT NOT NULL, "
    "destination TEXT NOT NULL, operation TEXT NOT NULL, fragment_sha256 TEXT NOT NULL, columns TEXT NOT NULL, "
    "decision TEXT NOT NULL, rows BIGINT NOT NULL, bytes BIGINT NOT NULL, prev_hash TEXT NOT NULL, entry_hash TEXT NOT NULL"
)
_ALL = (*FIELDS, "entry_hash")


class DuckDBLedger(Ledger):
    """The local governed zone's ledger: a DuckDB file, opened per append so that several processes
    (Dagster steps, agents) can take turns. Within a process, every ledger on the same file shares
    one lock, so that agents appending from several threads chain in one order."""

    _locks: dict[Path, threading.Lock] = {}
    _locks_guard = threading.Lock()

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with DuckDBLedger._locks_guard:
            self._lock = DuckDBLedger._locks.setdefault(self.path, threading.Lock())

    def _connect(self):
        import duckdb

        deadline = time.monotonic() + 60
        while True:
            try:
                db = duckdb.connect(str(self.path))
                db.execute(f"CREATE TABLE IF NOT EXISTS audit_ledger ({_COLUMNS_SQL})")
                return db
            except duckdb.IOException as exc:  # another process holds the file: wait for our turn
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _append(self, entry: dict[str, Any]) -> int:
        db = self._connect()
        try:
            db.execute("BEGIN TRANSACTION")
            last = db.execute("SELECT seq, entry_hash FROM audit_ledger ORDER BY seq DESC LIMIT 1").fetchone()
            entry["seq"] = (last[0] + 1) if last else 1
            entry["prev_hash"] = last[1] if last else GENESIS
            entry["entry_hash"] = entry_hash(entry)
            db.execute(f"INSERT INTO audit_ledger ({', '.join(_ALL)}) VALUES ({', '.join('?' for _ in _ALL)})", [entry[k] for k in _ALL])
            db.execute("COMMIT")
            return entry["seq"]
        finally:
            db.close()

    def entries(self, after: int = 0) -> list[dict[str, Any]]:
        db = self._connect()
        try:
            rows = db.execute(f"SELECT {', '.join(_ALL)} FROM audit_ledger WHERE seq > ? ORDER BY seq", [after]).fetchall()
        finally:
            db.close()
        return [dict(zip(_ALL, row)) for row in rows]

    def last_seq(self) -> int:
        db = self._connect()
        try:
            return int(db.execute("SELECT coalesce(max(seq), 0) FROM audit_ledger").fetchone()[0])
        finally:
            db.close()


class PostgresLedger(Ledger):
    """The prod governed zone's ledger: a PostgreSQL table, appended under a table lock so that
    agents in separate processes chain their entries in one order."""

    def __init__(self, dsn: str, schema: str = "fedlake_audit"):
        super().__init__()
        self.dsn = dsn
        self.schema = schema

    def _connect(self):
        import psycopg

        conn = psycopg.connect(self.dsn, autocommit=True)
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        conn.execute(f'CREATE TABLE IF NOT EXISTS "{self.schema}".audit_ledger ({_COLUMNS_SQL})')
        return conn

    def _append(self, entry: dict[str, Any]) -> int:
        with self._connect() as conn, conn.transaction():
            conn.execute(f'LOCK TABLE "{self.schema}".audit_ledger IN EXCLUSIVE MODE')
            last = conn.execute(f'SELECT seq, entry_hash FROM "{self.schema}".audit_ledger ORDER BY seq DESC LIMIT 1').fetchone()
            entry["seq"] = (last[0] + 1) if last else 1
            entry["prev_hash"] = last[1] if last else GENESIS
            entry["entry_hash"] = entry_hash(entry)
            conn.execute(
                f'INSERT INTO "{self.schema}".audit_ledger ({", ".join(_ALL)}) VALUES ({", ".join("%s" for _ in _ALL)})',
                [entry[k] for k in _ALL],
            )
            return entry["seq"]

    def entries(self, after: int = 0) -> list[dict[str, Any]]:
        with self._connect() as conn:
            rows = conn.execute(
                f'SELECT {", ".join(_ALL)} FROM "{self.schema}".audit_ledger WHERE seq > %s ORDER BY seq', [after]
            ).fetchall()
        return [dict(zip(_ALL, row)) for row in rows]

    def last_seq(self) -> int:
        with self._connect() as conn:
            return int(conn.execute(f'SELECT coalesce(max(seq), 0) FROM "{self.schema}".audit_ledger').fetchone()[0])


def open_ledger(location: str) -> Ledger:
    """A PostgreSQL DSN opens the PostgreSQL ledger; anything else is a DuckDB file path."""
    if location.startswith(("postgresql://", "postgres://")):
        return PostgresLedger(location)
    return DuckDBLedger(location)
