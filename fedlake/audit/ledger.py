"""The ledger object that agents, the coordinator and Dagster hold: append (group-committed),
witness, read and verify, over a DuckDB file or a PostgreSQL schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedlake.audit import budget as budgets
from fedlake.audit.budget import Budget, BudgetExceeded
from fedlake.audit.chain import Pending, head
from fedlake.audit.entry import STORED, new_entry
from fedlake.audit.group_commit import GroupCommit, group_commit_for
from fedlake.audit.stores import DuckDBStore, PostgresStore, Store
from fedlake.audit.verify import Heads, Verification, verify_entries


class Ledger:
    """One writer's view of the ledger: what it appends is signed with its `signer`. Every ledger of
    this process on the same table appends through one group commit."""

    def __init__(self, store: Store, signer: Ed25519PrivateKey | None = None) -> None:
        self.store = store
        self.signer = signer

    @property
    def commits(self) -> GroupCommit:
        """This process's queue for the ledger's table (looked up each time: a forked child has its own)."""
        return group_commit_for(self.store)

    def record(
        self, *, requester: str, purpose: str, silo: str, destination: str, operation: str, fragment: str,
        columns: list[dict[str, Any]], decision: str, rows: int = 0, nbytes: int = 0,
        epsilon: float = 0.0, delta: float = 0.0, error: str = "", budget: Budget | None = None,
    ) -> int:
        """Append one entry to chain `silo` and return its ledger seq once it is durable. With a
        budget, the spend is checked in the transaction that records it: a request over it is
        recorded as over_budget (spending nothing) and BudgetExceeded is raised."""
        entry = new_entry(requester=requester, purpose=purpose, silo=silo, destination=destination, operation=operation,
                          fragment=fragment, columns=columns, decision=decision, rows=rows, nbytes=nbytes,
                          epsilon=epsilon, delta=delta, error=error)
        placed = self.commits.append(Pending(entry, self.signer, budget))
        if placed.refusal:
            raise BudgetExceeded(placed.refusal)
        return placed.seq

    def spent(self, requester: str, purpose: str, silo: str, since: str) -> tuple[float, float]:
        """The epsilon and delta a requester has spent for a purpose at a silo since a moment."""
        return budgets.spent(self.store.read, requester, purpose, silo, since)

    def head(self, chain: str) -> tuple[int, str]:
        """(chain_seq, entry_hash) of the chain's last entry; (0, GENESIS) when it has none."""
        return head(self.store.read, chain)

    def heads(self) -> Heads:
        """Every chain's head, as witnesses record them."""
        rows = self.store.read(
            "SELECT chain, chain_seq, entry_hash FROM {table} t WHERE chain_seq = "
            "(SELECT max(chain_seq) FROM {table} u WHERE u.chain = t.chain) ORDER BY chain", [])
        return {chain: (int(seq), digest) for chain, seq, digest in rows}

    def witness(self, by: str, heads: Heads) -> int:
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
        rows = self.store.read(f"SELECT {', '.join(STORED)} FROM {{table}} WHERE {where} ORDER BY seq", params)
        return [dict(zip(STORED, row)) for row in rows]

    def window(self, first: int, last: int) -> list[dict[str, Any]]:
        """The entries with a ledger seq from `first` to `last`, in ledger order (what a reader pages through)."""
        rows = self.store.read(f"SELECT {', '.join(STORED)} FROM {{table}} WHERE seq BETWEEN ? AND ? ORDER BY seq", [first, last])
        return [dict(zip(STORED, row)) for row in rows]

    def last_seq(self) -> int:
        """The ledger seq of the last entry (0 when empty)."""
        return int(self.store.read("SELECT coalesce(max(seq), 0) FROM {table}", [])[0][0])

    def verify(self, public_keys: dict[str, Ed25519PublicKey] | None = None, require_signatures: bool = False,
               witnessed: dict[str, Heads] | None = None) -> Verification:
        """Check every chain (numbering, links, hashes, signatures) and every witnessed head, those
        recorded in the ledger and those kept outside it (`witnessed`: witness -> chain -> head)."""
        return verify_entries(self.entries(), public_keys or {}, require_signatures, witnessed or {})


class DuckDBLedger(Ledger):
    """The local governed zone's ledger: a DuckDB file."""

    def __init__(self, path: str | Path, signer: Ed25519PrivateKey | None = None):
        store = DuckDBStore(path)
        super().__init__(store, signer)
        self.path = store.path


class PostgresLedger(Ledger):
    """The prod governed zone's ledger: a table in a PostgreSQL schema."""

    def __init__(self, dsn: str, schema: str = "fedlake_audit", signer: Ed25519PrivateKey | None = None):
        store = PostgresStore(dsn, schema)
        super().__init__(store, signer)
        self.dsn, self.schema, self.table = dsn, schema, store.table


def open_ledger(location: str, signer: Ed25519PrivateKey | None = None) -> Ledger:
    """A PostgreSQL DSN opens the PostgreSQL ledger; anything else is a DuckDB file path. With a
    signer, every entry this ledger appends is signed with it."""
    if location.startswith(("postgresql://", "postgres://")):
        return PostgresLedger(location, signer=signer)
    return DuckDBLedger(location, signer=signer)
