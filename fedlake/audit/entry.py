"""One ledger entry: its fields, the canonical form its hash is taken over, and its seal.

An entry is sealed when it is given its place: its ledger seq, its number in its chain and the hash
of the entry before it in that chain. Its own hash covers all of that, and its writer's Ed25519
signature covers its hash, so neither its content nor its place can change unnoticed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlake.errors import FedlakeError

GENESIS = "0" * 64  # the prev_hash of a chain's first entry
LEGACY_CHAIN = "legacy"  # entries written before chains existed: one unsigned chain, hashed as they were
LEGACY_FIELDS = ("seq", "recorded_at", "requester", "purpose", "silo", "destination", "operation", "fragment_sha256", "columns", "decision", "rows", "bytes", "prev_hash")
FIELDS = (*LEGACY_FIELDS, "chain", "chain_seq", "epsilon", "delta", "error")
STORED = (*FIELDS, "entry_hash", "signature")  # every column of the ledger's table, in order


def entry_hash(entry: dict[str, Any]) -> str:
    fields = LEGACY_FIELDS if entry["chain"] == LEGACY_CHAIN else FIELDS
    canonical = json.dumps({k: entry[k] for k in fields}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def fragment_hash(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


def utc(timestamp: str | dt.datetime) -> str:
    """The text form recorded_at is stored in, so that timestamps compare as text."""
    moment = dt.datetime.fromisoformat(timestamp) if isinstance(timestamp, str) else timestamp
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")


def now() -> str:
    return utc(dt.datetime.now(dt.timezone.utc))


def new_entry(
    *, requester: str, purpose: str, silo: str, destination: str, operation: str, fragment: str,
    columns: list[dict[str, Any]], decision: str, rows: int, nbytes: int, epsilon: float, delta: float, error: str,
) -> dict[str, Any]:
    """An entry for chain `silo`, not yet placed: built by its caller, so that a value that cannot be
    recorded fails that caller alone, before it joins a batch."""
    texts = {"requester": requester, "purpose": purpose, "silo": silo, "destination": destination,
             "operation": operation, "decision": decision, "error": str(error)}
    for name, text in texts.items():
        if "\x00" in text:
            raise FedlakeError(f"audit entry field {name} holds a NUL character, which the ledger's table cannot store")
    return {
        "requester": requester, "purpose": purpose, "silo": silo, "chain": silo, "destination": destination,
        "operation": operation, "fragment_sha256": fragment_hash(fragment), "columns": json.dumps(columns, sort_keys=True),
        "decision": decision, "rows": int(rows), "bytes": int(nbytes), "epsilon": float(epsilon), "delta": float(delta),
        "error": str(error),
    }


def seal(entry: dict[str, Any], seq: int, chain_seq: int, prev_hash: str, recorded_at: str, signer: Ed25519PrivateKey | None) -> None:
    """Give the entry its place and time, its hash, and its writer's signature of that hash."""
    entry.update(seq=seq, chain_seq=chain_seq, prev_hash=prev_hash, recorded_at=recorded_at)
    entry["entry_hash"] = entry_hash(entry)
    entry["signature"] = signer.sign(bytes.fromhex(entry["entry_hash"])).hex() if signer else ""
