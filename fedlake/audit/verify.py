"""Verifying the ledger: every chain's numbering, links, hashes and signatures, and every head a
witness saw (in the ledger or outside it). Every problem is named with its chain and entry."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedlake.audit.entry import GENESIS, entry_hash

Heads = dict[str, tuple[int, str]]  # chain -> (chain_seq, entry_hash)


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


def verify_entries(entries: list[dict[str, Any]], public_keys: dict[str, Ed25519PublicKey], require_signatures: bool,
                   witnessed: dict[str, Heads]) -> Verification:
    """Check the entries (in ledger order) and the heads witnessed outside the ledger (witness -> heads)."""
    return _Verifier(entries, public_keys, require_signatures).run(witnessed)


class _Verifier:
    """One pass over the entries, collecting every problem with the ledger seq it is found at."""

    def __init__(self, entries: list[dict[str, Any]], keys: dict[str, Ed25519PublicKey], require_signatures: bool):
        self.entries, self.keys, self.require_signatures = entries, keys, require_signatures
        self.problems: list[tuple[int | None, str | None, str]] = []  # (ledger seq, chain, text)
        self.chains: dict[str, dict[int, dict[str, Any]]] = {}
        self.signatures = self.heads = 0
        self.unsigned: list[str] = []

    def run(self, outside: dict[str, Heads]) -> Verification:
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

    def _witnessed(self, outside: dict[str, Heads]) -> None:
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
