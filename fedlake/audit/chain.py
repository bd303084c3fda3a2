"""Placing a batch of entries on their chains, in one transaction of the ledger's store.

The ledger's last seq and each chain's head are read once, under the store's exclusive lock; every
entry of the batch is then numbered after the one before it (in the ledger and in its chain), checked
against its budget, sealed and signed. A budget is checked with SQL inside the same transaction after
the entries placed before it are written, so it sees them all: earlier batches and its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlake.audit import budget as budgets
from fedlake.audit.budget import Budget, Run
from fedlake.audit.entry import GENESIS, STORED, now, seal

_ROWS_PER_INSERT = 64  # rows in one multi-row INSERT: few round trips, a modest number of parameters


@dataclass
class Pending:
    """One caller's entry waiting for its batch: what to write, and, once the batch is committed,
    its ledger seq and any budget refusal (or the error that kept the batch from committing)."""

    entry: dict[str, Any]
    signer: Ed25519PrivateKey | None
    budget: Budget | None
    seq: int = 0
    refusal: str | None = None
    failure: BaseException | None = None
    done: bool = False


@dataclass
class _Rows:
    """Sealed entries not yet sent to the database, written before anything reads the table."""

    run: Run
    waiting: list[dict[str, Any]] = field(default_factory=list)

    def add(self, entry: dict[str, Any]) -> None:
        self.waiting.append(entry)
        if len(self.waiting) >= _ROWS_PER_INSERT:
            self.flush()

    def flush(self) -> None:
        if not self.waiting:
            return
        row = f"({', '.join('?' for _ in STORED)})"
        self.run(f"INSERT INTO {{table}} ({', '.join(STORED)}) VALUES {', '.join(row for _ in self.waiting)}",
                 [entry[column] for entry in self.waiting for column in STORED])
        self.waiting.clear()


def head(run: Run, chain: str) -> tuple[int, str]:
    """(chain_seq, entry_hash) of the chain's last entry; (0, GENESIS) when it has none."""
    rows = run("SELECT chain_seq, entry_hash FROM {table} WHERE chain = ? ORDER BY chain_seq DESC LIMIT 1", [chain])
    return (int(rows[0][0]), rows[0][1]) if rows else (0, GENESIS)


def place(run: Run, batch: list[Pending]) -> None:
    """Number, check, seal and insert every entry of the batch, in the batch's order."""
    rows = _Rows(run)
    [(last,)] = run("SELECT coalesce(max(seq), 0) FROM {table}", [])
    seq = int(last)
    heads: dict[str, tuple[int, str]] = {}
    for pending in batch:
        entry = pending.entry
        if pending.budget is not None:
            rows.flush()
            pending.refusal = budgets.refusal(run, entry, pending.budget)
            if pending.refusal:
                entry.update(decision="over_budget", epsilon=0.0, delta=0.0)
        chain = entry["chain"]
        if chain not in heads:
            heads[chain] = head(run, chain)
        chain_seq, prev_hash = heads[chain]
        seq += 1
        seal(entry, seq, chain_seq + 1, prev_hash, now(), pending.signer)
        heads[chain] = (chain_seq + 1, entry["entry_hash"])
        rows.add(entry)
    rows.flush()
    for pending in batch:
        pending.seq = pending.entry["seq"]
