"""The audit ledger: an append-only record of every request, one signed hash chain per writer.

Each entry holds who asked, for what purpose, from which silo to which region, a hash of the
fragment, the decision for every output column, the rows and bytes that left, the privacy budget
spent and the error of a failed request. Every writer (an agent's silo, the coordinator, Dagster)
appends to its own chain: its entries are numbered from 1, each carries the hash of the one before
and an Ed25519 signature of its own hash. A hash chain alone can be recomputed by whoever can write
the table, so signatures make a rechained entry fail; and since nothing inside a chain shows that its
last entries were cut off, each writer's head (seq, hash) is witnessed in other chains and outside
the ledger. `verify` checks all of it and names the chain, the entry and what is missing.

`seq` numbers entries across the whole ledger (the order in which they were appended, also hashed),
`chain_seq` within their chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedlake.errors import FedlakeError

GENESIS = "0" * 64
LEGACY_CHAIN = "legacy"  # entries written before chains existed: one unsigned chain, hashed as they were
LEGACY_FIELDS = ("seq", "recorded_at", "requester", "purpose", "silo", "destination", "operation", "fragment_sha256", "columns", "decision", "rows", "bytes", "prev_hash")
FIELDS = (*LEGACY_FIELDS, "chain", "chain_seq", "epsilon", "delta", "error")
NOT_SPENT = ("denied", "over_budget")  # decisions that release nothing, so spend no privacy budget
_ALL = (*FIELDS, "entry_hash", "signature")
_BUDGET_SLACK = 1e-9  # float sums of many small charges must not refuse the last one that fits exactly

Run = Callable[[str, list[Any]], list[tuple]]


def entry_hash(entry: dict[str, Any]) -> str:
    fields = LEGACY_FIELDS if entry["chain"] == LEGACY_CHAIN else FIELDS
    canonical = json.dumps({k: entry[k] for k in fields}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def fragment_hash(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


def _utc(timestamp: str | dt.datetime) -> str:
    """The text form recorded_at is stored in, so that timestamps compare as text."""
    moment = dt.datetime.fromisoformat(timestamp) if isinstance(timestamp, str) else timestamp
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")


class BudgetExceeded(FedlakeError):
    """A request would spend more privacy budget than its requester × purpose × silo holds."""


@dataclass(frozen=True)
class Budget:
    """The epsilon and delta a requester may spend for a purpose at a silo since a moment (ISO)."""

    epsilon: float
    delta: float
    since: str


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    first_broken: int | None = None  # the ledger seq of the first broken entry (None: a chain lost its tail)
    reason: str = ""
    chains: int = 0
    signatures: int = 0
    witnessed: int = 0
    chain: str | None = None  # the chain of the first problem
    problems: tuple[str, ...] = ()
    unsigned: tuple[str, ...] = ()  # chains accepted without a public key

    def __str__(self) -> str:
        if self.ok:
            text = (f"audit ledger intact: {self.entries} entries in {self.chains} chains, "
                    f"{self.signatures} signatures and {self.witnessed} witnessed heads verified")
            return text + (f"; no public key for chains {', '.join(self.unsigned)}" if self.unsigned else "")
        where = f" at entry {self.first_broken}" if self.first_broken is not None else ""
        lines = [f"audit ledger BROKEN{where}: {self.reason} ({self.entries} entries in {self.chains} chains)"]
        lines += [f"  also: {p}" for p in self.problems[1:20]]
        if len(self.problems) > 20:
            lines.append(f"  and {len(self.problems) - 20} more problems")
        return "\n".join(lines)


class Ledger(ABC):
    """Append, witness and verify; storage is DuckDB (local governed zone) or PostgreSQL (prod).
    Backends give one exclusive transaction (`_exclusive`) and reads (`_read`), in SQL written with
    `?` placeholders and `{table}`."""

    def __init__(self, signer: Ed25519PrivateKey | None = None) -> None:
        self._lock = threading.Lock()
        self.signer = signer

    def record(
        self, *, requester: str, purpose: str, silo: str, destination: str, operation: str, fragment: str,
        columns: list[dict[str, Any]], decision: str, rows: int = 0, nbytes: int = 0,
        epsilon: float = 0.0, delta: float = 0.0, error: str = "", budget: Budget | None = None,
    ) -> int:
        """Append one entry to chain `silo`; returns its ledger seq. With a budget, the spend is
        checked and recorded in one transaction: a request over it is recorded as over_budget
        (spending nothing) and BudgetExceeded is raised."""
        entry = {
            "recorded_at": _utc(dt.datetime.now(dt.timezone.utc)), "requester": requester, "purpose": purpose,
            "silo": silo, "chain": silo, "destination": destination, "operation": operation,
            "fragment_sha256": fragment_hash(fragment), "columns": json.dumps(columns, sort_keys=True), "decision": decision,
            "rows": int(rows), "bytes": int(nbytes), "epsilon": float(epsilon), "delta": float(delta), "error": str(error),
        }
        refusal = None
        with self._lock, self._exclusive() as run:
            if budget is not None:
                refusal = self._over_budget(run, entry, budget)
                if refusal:
                    entry.update(decision="over_budget", epsilon=0.0, delta=0.0)
            seq = self._append(run, entry)
        if refusal:
            raise BudgetExceeded(refusal)
        return seq

    def _over_budget(self, run: Run, entry: dict[str, Any], budget: Budget) -> str | None:
        spent_epsilon, spent_delta = self._spent(run, entry["requester"], entry["purpose"], entry["silo"], budget.since)
        epsilon_over = spent_epsilon + entry["epsilon"] > budget.epsilon * (1 + _BUDGET_SLACK) + _BUDGET_SLACK
        delta_over = spent_delta + entry["delta"] > budget.delta * (1 + _BUDGET_SLACK) + _BUDGET_SLACK
        if not (epsilon_over or delta_over):
            return None
        text = (f"privacy budget exceeded for {entry['requester']} / {entry['purpose']} at {entry['silo']} since {budget.since}: "
                f"spent epsilon {spent_epsilon:g} + requested {entry['epsilon']:g} > limit {budget.epsilon:g}")
        if delta_over:
            text += f", spent delta {spent_delta:g} + requested {entry['delta']:g} > limit {budget.delta:g}"
        return text

    def _spent(self, run: Run, requester: str, purpose: str, silo: str, since: str) -> tuple[float, float]:
        placeholders = ", ".join("?" for _ in NOT_SPENT)
        [(epsilon, delta)] = run(
            "SELECT coalesce(sum(epsilon), 0), coalesce(sum(delta), 0) FROM {table} WHERE requester = ? AND purpose = ? "
            f"AND silo = ? AND recorded_at >= ? AND decision NOT IN ({placeholders})",
            [requester, purpose, silo, _utc(since), *NOT_SPENT],
        )
        return float(epsilon), float(delta)

    def spent(self, requester: str, purpose: str, silo: str, since: str) -> tuple[float, float]:
        """The epsilon and delta a requester has spent for a purpose at a silo since a moment."""
        return self._spent(self._read, requester, purpose, silo, since)

    def _append(self, run: Run, entry: dict[str, Any]) -> int:
        """Chain the entry to its chain's head and the ledger's last seq, seal it, insert it."""
        [(last,)] = run("SELECT coalesce(max(seq), 0) FROM {table}", [])
        head = run("SELECT chain_seq, entry_hash FROM {table} WHERE chain = ? ORDER BY chain_seq DESC LIMIT 1", [entry["chain"]])
        chain_seq, prev_hash = head[0] if head else (0, GENESIS)
        entry.update(seq=int(last) + 1, chain_seq=int(chain_seq) + 1, prev_hash=prev_hash)
        entry["entry_hash"] = entry_hash(entry)
        entry["signature"] = self.signer.sign(bytes.fromhex(entry["entry_hash"])).hex() if self.signer else ""
        run(f"INSERT INTO {{table}} ({', '.join(_ALL)}) VALUES ({', '.join('?' for _ in _ALL)})", [entry[k] for k in _ALL])
        return entry["seq"]

    def head(self, chain: str) -> tuple[int, str]:
        """(chain_seq, entry_hash) of the chain's last entry; (0, GENESIS) when it has none."""
        rows = self._read("SELECT chain_seq, entry_hash FROM {table} WHERE chain = ? ORDER BY chain_seq DESC LIMIT 1", [chain])
        return (int(rows[0][0]), rows[0][1]) if rows else (0, GENESIS)

    def heads(self) -> dict[str, tuple[int, str]]:
        """Every chain's head, as witnesses record them."""
        rows = self._read(
            "SELECT chain, chain_seq, entry_hash FROM {table} t WHERE chain_seq = "
            "(SELECT max(chain_seq) FROM {table} u WHERE u.chain = t.chain) ORDER BY chain", [])
        return {chain: (int(seq), digest) for chain, seq, digest in rows}

    def witness(self, by: str, heads: dict[str, tuple[int, str]]) -> int:
        """Record in chain `by` the heads it saw, so that cutting those chains short shows; returns the seq."""
        listed = [{"chain": chain, "seq": int(seq), "hash": digest} for chain, (seq, digest) in sorted(heads.items())]
        return self.record(
            requester=by, purpose="audit", silo=by, destination="", operation="witness",
            fragment=json.dumps({c: [int(s), h] for c, (s, h) in heads.items()}, sort_keys=True, separators=(",", ":")),
            columns=listed, decision="witnessed",
        )

    def entries(self, after: int = 0, chain: str | None = None) -> list[dict[str, Any]]:
        """The entries with a ledger seq above `after` (of one chain, if named), in ledger order."""
        where, params = ("seq > ? AND chain = ?", [after, chain]) if chain is not None else ("seq > ?", [after])
        rows = self._read(f"SELECT {', '.join(_ALL)} FROM {{table}} WHERE {where} ORDER BY seq", params)
        return [dict(zip(_ALL, row)) for row in rows]

    def last_seq(self) -> int:
        """The ledger seq of the last entry (0 when empty)."""
        return int(self._read("SELECT coalesce(max(seq), 0) FROM {table}", [])[0][0])

    def verify(self, public_keys: dict[str, Ed25519PublicKey] | None = None, require_signatures: bool = False,
               witnessed: dict[str, dict[str, tuple[int, str]]] | None = None) -> Verification:
        """Check every chain (numbering, links, hashes, signatures) and every witnessed head, those
        recorded in the ledger and those kept outside it (`witnessed`: witness -> chain -> head)."""
        return _Verifier(self.entries(), public_keys or {}, require_signatures).run(witnessed or {})

    @abstractmethod
    def _exclusive(self) -> Iterator[Run]:
        """One transaction that no other append can interleave with (a context manager)."""

    @abstractmethod
    def _read(self, sql: str, params: list[Any]) -> list[tuple]:
        """Run one read outside any append."""


class _Verifier:
    """One pass over the entries, collecting every problem with the ledger seq it is found at."""

    def __init__(self, entries: list[dict[str, Any]], keys: dict[str, Ed25519PublicKey], require_signatures: bool):
        self.entries, self.keys, self.require_signatures = entries, keys, require_signatures
        self.problems: list[tuple[int | None, str | None, str]] = []  # (ledger seq, chain, text)
        self.chains: dict[str, dict[int, dict[str, Any]]] = {}
        self.signatures = self.heads = 0
        self.unsigned: list[str] = []

    def run(self, outside: dict[str, dict[str, tuple[int, str]]]) -> Verification:
        self._ledger_order()
        for entry in self.entries:
            self.chains.setdefault(entry["chain"], {})[int(entry["chain_seq"])] = entry
        for chain, entries in self.chains.items():
            self._chain(chain, entries)
        self._witnessed(outside)
        ordered = sorted(self.problems, key=lambda p: (p[0] is None, p[0] or 0))
        first = ordered[0] if ordered else (None, None, "")
        return Verification(
            ok=not ordered, entries=len(self.entries), first_broken=first[0], reason=first[2], chains=len(self.chains),
            signatures=self.signatures, witnessed=self.heads, chain=first[1], problems=tuple(p[2] for p in ordered),
            unsigned=tuple(self.unsigned),
        )

    def _ledger_order(self) -> None:
        expected = 1
        for entry in self.entries:
            if entry["seq"] != expected:
                self.problems.append((expected, None, f"the ledger's {_span(expected, entry['seq'] - 1)} missing"))
            expected = entry["seq"] + 1

    def _chain(self, chain: str, entries: dict[int, dict[str, Any]]) -> None:
        key = self.keys.get(chain)
        if key is None:
            self.unsigned.append(chain)
            if self.require_signatures:
                self.problems.append((None, chain, f"chain {chain}: no public key, so the signatures of its {len(entries)} entries cannot be checked"))
        previous, expected = GENESIS, 1
        for number in sorted(entries):
            entry = entries[number]
            where = f"chain {chain}, its entry {number}"
            if number != expected:
                self.problems.append((entry["seq"], chain, f"chain {chain}: {_span(expected, number - 1)} missing before its entry {number}"))
            elif entry["prev_hash"] != previous:
                self.problems.append((entry["seq"], chain, f"{where}: does not chain to the entry before it"))
            if entry_hash(entry) != entry["entry_hash"]:
                self.problems.append((entry["seq"], chain, f"{where}: its content no longer matches its hash"))
            if key is not None:
                self._signature(key, entry, where)
            previous, expected = entry["entry_hash"], number + 1

    def _signature(self, key: Ed25519PublicKey, entry: dict[str, Any], where: str) -> None:
        if not entry["signature"]:
            self.problems.append((entry["seq"], entry["chain"], f"{where}: unsigned, though its chain has a public key"))
            return
        self.signatures += 1
        try:
            key.verify(bytes.fromhex(entry["signature"]), bytes.fromhex(entry["entry_hash"]))
        except (InvalidSignature, ValueError):
            self.problems.append((entry["seq"], entry["chain"], f"{where}: its signature does not verify with its chain's public key"))

    def _witnessed(self, outside: dict[str, dict[str, tuple[int, str]]]) -> None:
        """Every head a witness saw must still be there, with the hash it had."""
        seen: list[tuple[str, int, str, str]] = []  # (chain, seq, hash, by whom and where)
        for entry in self.entries:
            if entry["operation"] == "witness" and entry["decision"] == "witnessed":
                for head in _heads_of(entry):
                    seen.append((head["chain"], int(head["seq"]), head["hash"], f"by {entry['chain']} at its entry {entry['chain_seq']}"))
        for by, heads in outside.items():
            seen += [(chain, int(seq), digest, f"by {by}, outside the ledger") for chain, (seq, digest) in heads.items()]
        truncated: dict[str, tuple[int, str]] = {}
        for chain, seq, digest, witness in seen:
            self.heads += 1
            entries = self.chains.get(chain, {})
            last = max(entries, default=0)
            if seq > last:
                if seq > truncated.get(chain, (0, ""))[0]:
                    truncated[chain] = (seq, witness)
            elif seq in entries and entries[seq]["entry_hash"] != digest:
                rewritten = entries[seq]
                self.problems.append((rewritten["seq"], chain, f"chain {chain}: its entry {seq} was rewritten: its hash differs "
                                      f"from the head witnessed {witness}"))
        for chain, (seq, witness) in truncated.items():
            last = max(self.chains.get(chain, {}), default=0)
            self.problems.append((None, chain, f"chain {chain}: {_span(last + 1, seq)} missing: witnessed head seq {seq} {witness}"))


def _heads_of(entry: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        heads = json.loads(entry["columns"])
    except ValueError:
        return []
    return [h for h in heads if isinstance(h, dict) and {"chain", "seq", "hash"} <= h.keys()] if isinstance(heads, list) else []


def _span(first: int, last: int) -> str:
    return f"entry {first} is" if first == last else f"entries {first}..{last} are"


_COLUMNS_SQL = (
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


class DuckDBLedger(Ledger):
    """The local governed zone's ledger: a DuckDB file, opened per append so that several processes
    (Dagster steps, agents) can take turns. Within a process, every ledger on the same file shares
    one lock, so that agents appending from several threads chain in one order."""

    _locks: dict[Path, threading.Lock] = {}
    _ready: set[Path] = set()
    _locks_guard = threading.Lock()

    def __init__(self, path: str | Path, signer: Ed25519PrivateKey | None = None):
        super().__init__(signer)
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
                break
            except duckdb.IOException as exc:  # another process holds the file: wait for our turn
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if self.path not in DuckDBLedger._ready:
            self._prepare(db)
        return db

    def _prepare(self, db) -> None:
        """Bring a table made by an older fedlake up to date (checked once per process)."""
        have = {r[0] for r in db.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'audit_ledger'").fetchall()}
        if not set(_ALL) <= have:
            db.execute("BEGIN TRANSACTION")
            for statement in _MIGRATION:
                db.execute(statement.format(table="audit_ledger"))
            db.execute("COMMIT")
        db.execute(_CHAIN_INDEX.format(index="audit_ledger_chain_seq", table="audit_ledger"))
        DuckDBLedger._ready.add(self.path)

    @contextmanager
    def _exclusive(self) -> Iterator[Run]:
        db = self._connect()
        try:
            db.execute("BEGIN TRANSACTION")
            yield lambda sql, params: db.execute(sql.format(table="audit_ledger"), params).fetchall()
            db.execute("COMMIT")
        finally:
            db.close()  # closing without COMMIT rolls back

    def _read(self, sql: str, params: list[Any]) -> list[tuple]:
        db = self._connect()
        try:
            return db.execute(sql.format(table="audit_ledger"), params).fetchall()
        finally:
            db.close()


class PostgresLedger(Ledger):
    """The prod governed zone's ledger: a PostgreSQL table, appended under a table lock so that
    agents in separate processes chain their entries in one order."""

    def __init__(self, dsn: str, schema: str = "fedlake_audit", signer: Ed25519PrivateKey | None = None):
        super().__init__(signer)
        self.dsn = dsn
        self.schema = schema
        self.table = f'"{schema}".audit_ledger'
        self._prepared = False

    def _connect(self):
        import psycopg

        conn = psycopg.connect(self.dsn, autocommit=True)
        if not self._prepared:
            errors = psycopg.errors
            try:
                self._prepare(conn)
            except (errors.UniqueViolation, errors.DuplicateObject, errors.DuplicateTable, errors.DuplicateSchema):
                self._prepare(conn)  # another process created it at the same moment: now it is there
        return conn

    def _prepare(self, conn) -> None:
        """Create the table, or bring one made by an older fedlake up to date (once per ledger)."""
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table} ({_COLUMNS_SQL})")
        have = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = 'audit_ledger'", [self.schema])}
        if not set(_ALL) <= have:
            with conn.transaction():
                conn.execute(f"LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE")
                for statement in _MIGRATION:
                    conn.execute(statement.format(table=self.table))
        conn.execute(_CHAIN_INDEX.format(index="audit_ledger_chain_seq", table=self.table))
        self._prepared = True

    def _sql(self, sql: str) -> str:
        return sql.format(table=self.table).replace("?", "%s")

    @contextmanager
    def _exclusive(self) -> Iterator[Run]:
        with self._connect() as conn, conn.transaction():
            conn.execute(f"LOCK TABLE {self.table} IN EXCLUSIVE MODE")
            yield lambda sql, params: _fetch(conn.execute(self._sql(sql), params))

    def _read(self, sql: str, params: list[Any]) -> list[tuple]:
        with self._connect() as conn:
            return _fetch(conn.execute(self._sql(sql), params))


def _fetch(cursor) -> list[tuple]:
    return cursor.fetchall() if cursor.description else []


def open_ledger(location: str, signer: Ed25519PrivateKey | None = None) -> Ledger:
    """A PostgreSQL DSN opens the PostgreSQL ledger; anything else is a DuckDB file path. With a
    signer, every entry this ledger appends is signed with it."""
    if location.startswith(("postgresql://", "postgres://")):
        return PostgresLedger(location, signer=signer)
    return DuckDBLedger(location, signer=signer)
