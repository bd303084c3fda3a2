"""`fedlake audit verify` (every chain, signature and witnessed head) and `fedlake audit show`
(entries as a person reads them: who asked what for which purpose, what was decided, what left)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fedlake.cli.messages import shorten


def register(verbs: argparse._SubParsersAction) -> None:
    audit = verbs.add_parser("audit", help="the audit ledger").add_subparsers(dest="audit_command", required=True)
    verify = audit.add_parser("verify", help="check every chain's hashes, signatures and witnessed heads; names what is broken or missing")
    verify.add_argument("--require-signatures", action="store_true",
                        help="fail on unsigned entries and on chains without a public key ($FEDLAKE_LEDGER_KEYS or <data>/keys)")
    verify.set_defaults(run=cmd_audit_verify)
    show = audit.add_parser("show", help="print ledger entries readably: one by its seq, or the last N")
    show.add_argument("seq", nargs="?", type=int, default=None, help="the ledger seq of one entry")
    show.add_argument("--last", type=int, default=None, metavar="N", help="the last N entries (default 10)")
    show.set_defaults(run=cmd_audit_show)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from fedlake.agent import ledger_for
    from fedlake.signing import public_keys
    from fedlake.silos import data_dir

    home = data_dir()
    result = ledger_for(home).verify(public_keys(home), require_signatures=args.require_signatures)
    print(result)
    return 0 if result.ok else 1


def cmd_audit_show(args: argparse.Namespace) -> int:
    from fedlake.agent import ledger_for
    from fedlake.errors import FedlakeError
    from fedlake.silos import data_dir

    if args.seq is not None and args.last is not None:
        raise FedlakeError("audit show takes one entry's seq or --last N, not both")
    ledger = ledger_for(data_dir())
    last = ledger.last_seq()
    if args.seq is not None:
        entries = ledger.window(args.seq, args.seq)
        if not entries:
            raise FedlakeError(f"no audit entry {args.seq} in the ledger (its entries are 1 to {last})")
    else:
        count = 10 if args.last is None else args.last
        if count < 1:
            raise FedlakeError(f"--last needs a positive number of entries, got {count}")
        entries = ledger.window(max(1, last - count + 1), last)
        if not entries:
            print("the ledger has no entries")
            return 0
    print("\n\n".join(describe(entry) for entry in entries))
    return 0


def describe(entry: dict[str, Any]) -> str:
    """One entry as lines: what happened first, then the evidence (hashes, signature)."""
    when = str(entry["recorded_at"]).replace("T", " ")[:19] + " UTC"
    head = f"#{entry['seq']}  {when}  chain {entry['chain']} #{entry['chain_seq']}"
    if entry["operation"] == "witness":
        lines = [head, f"  {entry['requester']} witnessed the heads of: " + ", ".join(
            f"{c['chain']} #{c['seq']}" for c in _columns(entry))]
    else:
        to = f" to {entry['destination']}" if entry["destination"] else ""
        lines = [head, f"  {entry['requester']} — {entry['operation']} for {entry['purpose']}, {entry['silo']}{to}: "
                       f"{entry['decision'].upper()}"]
        if entry["rows"] or entry["bytes"]:
            lines.append(f"  left the silo: {entry['rows']:,} rows, {entry['bytes']:,} bytes")
        if entry["epsilon"] or entry["delta"]:
            lines.append(f"  privacy spent: epsilon {entry['epsilon']:g}, delta {entry['delta']:g}")
        for column in _columns(entry):
            lines.append("  " + _column(column))
        if entry["error"]:
            lines.append(f"  error: {entry['error']}")
    signed = "signed" if entry.get("signature") else "unsigned"
    lines.append(f"  fragment sha256 {entry['fragment_sha256'][:16]}…  entry hash {entry['entry_hash'][:16]}…  {signed}")
    return "\n".join(lines)


def _columns(entry: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        columns = json.loads(entry["columns"] or "[]")
    except json.JSONDecodeError:
        return [{"refused": entry["columns"]}]
    return [c if isinstance(c, dict) else {"value": c} for c in columns]


def _column(column: dict[str, Any]) -> str:
    if "refused" in column:
        return f"refused: {shorten(str(column['refused']), 400)}"
    if "output" in column:
        sources = ", ".join(column.get("sources") or ()) or "no source column"
        rules = "; ".join(column.get("rules") or ())
        return f"{column['output']}: {str(column.get('action', '')).upper()} from {sources}" + (f" [{rules}]" if rules else "")
    return ", ".join(f"{k} {v}" for k, v in sorted(column.items()))
