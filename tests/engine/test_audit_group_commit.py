"""Group commit: many threads append at once, their entries share transactions, and still every
chain is gap-free and signed, every caller that returned finds its entry, no budget is overspent,
and a crash loses only entries whose callers had not returned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import defaultdict

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg.conninfo import make_conninfo

from fedlake.audit import Budget, BudgetExceeded, DuckDBLedger, PostgresLedger, fragment_hash, group_commit
from fedlake.audit.budget import NOT_SPENT
from fedlake.audit.chain import Pending, place
from fedlake.audit.entry import new_entry
from fedlake.audit.stores import TABLE_COLUMNS
from fedlake.errors import FedlakeError
from tests.conftest import REPO
from tests.engine.test_audit import SINCE, charge, ledger, raw, writer  # noqa: F401 - `ledger` is the fixture of both backends

THREADS = 50
CHAINS = ("eu_core", "us_lake", "sg_lake")


def run_threads(count: int, work) -> None:
    """Start `count` threads at one moment and wait for them all."""
    start = threading.Barrier(count)

    def body(worker: int) -> None:
        start.wait()
        work(worker)

    threads = [threading.Thread(target=body, args=(w,)) for w in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def append(ledger, worker: int, n: int, rows: int = 0) -> int:
    return ledger.record(requester="coordinator", purpose="analytics", silo=CHAINS[worker % len(CHAINS)], destination="EU",
                         operation="query", fragment=f"worker {worker} entry {n}", columns=[{"output": "x", "action": "allow"}],
                         decision="allowed", rows=rows)


def test_fifty_threads_append_in_shared_transactions_and_every_chain_holds(ledger):
    keys = {chain: Ed25519PrivateKey.generate() for chain in CHAINS}
    per_thread = 8
    returned: dict[int, str] = {}

    def work(worker: int) -> None:
        mine = writer(ledger, keys[CHAINS[worker % len(CHAINS)]])
        for n in range(per_thread):
            returned[append(mine, worker, n)] = fragment_hash(f"worker {worker} entry {n}")

    run_threads(THREADS, work)
    total = THREADS * per_thread
    entries = ledger.entries()
    assert [e["seq"] for e in entries] == list(range(1, total + 1)) and len(returned) == total
    assert {e["seq"]: e["fragment_sha256"] for e in entries} == returned, "each caller's seq is the entry it wrote"
    numbers = defaultdict(list)
    for entry in entries:
        numbers[entry["chain"]].append(entry["chain_seq"])
    assert {chain: seqs for chain, seqs in numbers.items()} == {
        chain: list(range(1, len(numbers[chain]) + 1)) for chain in CHAINS}
    result = ledger.verify({chain: key.public_key() for chain, key in keys.items()}, require_signatures=True)
    assert result.ok and result.signatures == total, str(result)
    assert ledger.commits.batches < total / 2, f"{total} appends took {ledger.commits.batches} transactions"


def test_a_budget_sees_the_spends_placed_before_it_in_its_own_batch(ledger):
    budget = Budget(epsilon=2.5, delta=1e-5, since=SINCE)
    batch = [Pending(new_entry(requester="analyst", purpose="analytics", silo="us_lake", destination="EU", operation="query",
                               fragment=f"SELECT count(*) -- {n}", columns=[], decision="aggregated", rows=1, nbytes=8,
                               epsilon=1.0, delta=1e-7, error=""), None, budget) for n in range(4)]
    with ledger.commits.store.transaction() as run:
        place(run, batch)
    assert [p.refusal is None for p in batch] == [True, True, False, False]
    assert "spent epsilon 2 + requested 1 > limit 2.5" in batch[2].refusal
    assert [(e["decision"], e["epsilon"]) for e in ledger.entries()] == [("aggregated", 1.0)] * 2 + [("over_budget", 0.0)] * 2
    assert ledger.spent("analyst", "analytics", "us_lake", SINCE) == pytest.approx((2.0, 2e-7))
    assert ledger.verify().ok


def test_fifty_threads_spending_one_budget_never_overspend_it(ledger):
    budget = Budget(epsilon=4.0, delta=1e-5, since=SINCE)
    granted, refused = [], []

    def work(worker: int) -> None:
        mine = writer(ledger, None)
        for _ in range(3):
            try:
                granted.append(charge(mine, 0.25, budget))
            except BudgetExceeded:
                refused.append(worker)
            append(mine, worker, 0)  # entries that spend nothing share the batches

    run_threads(THREADS, work)
    assert len(granted) == 16 and len(refused) == THREADS * 3 - 16
    spends = [e for e in ledger.entries() if e["requester"] == "analyst"]
    assert sum(e["epsilon"] for e in spends if e["decision"] not in NOT_SPENT) == pytest.approx(4.0)
    assert sorted(e["seq"] for e in spends if e["decision"] == "aggregated") == sorted(granted)
    running = 0.0
    for entry in spends:  # in ledger order, the budget is never exceeded at any point
        if entry["decision"] == "aggregated":
            running += entry["epsilon"]
        assert running <= 4.0 + 1e-9
    assert ledger.verify().ok


def test_a_failed_batch_fails_every_caller_in_it_and_writes_none_of_it(ledger):
    """An insider's CHECK constraint refuses one entry: its whole batch rolls back, each of its
    callers gets the error, and every caller that returned finds its entry."""
    if isinstance(ledger, PostgresLedger):
        raw(ledger, f'CREATE SCHEMA IF NOT EXISTS "{ledger.schema}"')
    raw(ledger, f"CREATE TABLE {{table}} ({TABLE_COLUMNS}, CHECK (rows <> 13))")
    outcomes: dict[tuple[int, int], int | Exception] = {}

    def work(worker: int) -> None:
        mine = writer(ledger, None)
        for n in range(4):
            try:
                outcomes[worker, n] = append(mine, worker, n, rows=13 if (worker, n) == (7, 2) else n)
            except Exception as exc:  # noqa: BLE001 - the constraint's error, as each caller of the batch gets it
                outcomes[worker, n] = exc

    run_threads(THREADS, work)
    failed = {call for call, outcome in outcomes.items() if isinstance(outcome, Exception)}
    assert (7, 2) in failed and len(outcomes) == THREADS * 4
    written = {e["fragment_sha256"]: e["seq"] for e in ledger.entries()}
    for (worker, n), outcome in outcomes.items():
        digest = fragment_hash(f"worker {worker} entry {n}")
        if (worker, n) in failed:
            assert digest not in written, f"worker {worker} entry {n} failed but was written"
        else:
            assert written[digest] == outcome
    assert len(written) == THREADS * 4 - len(failed) and ledger.verify().ok


CRASHING_WRITER = """
import os, sys, threading
from fedlake.audit import DuckDBLedger, PostgresLedger
kind, location, schema = sys.argv[1:4]
ledger = DuckDBLedger(location) if kind == "duckdb" else PostgresLedger(location, schema=schema)
def append(worker):
    for n in range(100_000):
        seq = ledger.record(requester="coordinator", purpose="analytics", silo=f"silo{worker % 3}", destination="EU",
                            operation="query", fragment=f"{worker}:{n}", columns=[], decision="allowed")
        os.write(1, f"{seq} {worker}:{n}\\n".encode())
for worker in range(50):
    threading.Thread(target=append, args=(worker,), daemon=True).start()
threading.Event().wait()
"""


def test_a_writer_killed_mid_batch_loses_only_entries_whose_callers_had_not_returned(ledger):
    kind, location, schema = ("duckdb", str(ledger.path), "") if isinstance(ledger, DuckDBLedger) else ("postgres", ledger.dsn, ledger.schema)
    child = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, kind, location, schema], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    returned = []
    for line in child.stdout:
        returned.append(line.decode().split())
        if len(returned) >= 300:
            child.send_signal(signal.SIGKILL)
            break
    returned += [line.decode().split() for line in child.stdout]  # what returned before the kill landed
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    written = {e["seq"]: e["fragment_sha256"] for e in ledger.entries()}
    for seq, fragment in returned:
        assert written.get(int(seq)) == fragment_hash(fragment), f"caller of {fragment} got seq {seq}, which the ledger lacks"
    assert sorted(written) == list(range(1, len(written) + 1)) and ledger.verify().ok
    assert append(ledger, 0, 0) == len(written) + 1 and ledger.verify().ok, "the ledger goes on after the crash"


def test_an_entry_the_table_cannot_store_fails_its_caller_before_it_joins_a_batch(ledger):
    with pytest.raises(FedlakeError, match="audit entry field error holds a NUL character"):
        ledger.record(requester="coordinator", purpose="analytics", silo="us_lake", destination="EU", operation="query",
                      fragment="SELECT 1", columns=[], decision="failed", error="E1\x00")
    assert append(ledger, 0, 0) == 1 and ledger.verify().ok


def test_a_child_forked_right_after_an_append_chains_its_own_entries(ledger):
    """A process forked while its parent may still hold the ledger's connection (PostgreSQL keeps it
    between batches) appends through connections of its own; both chains stay whole."""
    assert append(ledger, 0, 0) == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: append, report the seqs, and leave without running the parent's cleanup
        try:
            seqs = [append(ledger, 1, n) for n in range(3)]
            os.write(write, " ".join(map(str, seqs)).encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child = [int(seq) for seq in os.read(read, 1000).decode().split()]
    os.close(read)
    assert status == 0 and len(child) == 3
    parent = [append(ledger, 0, n) for n in range(1, 4)]
    entries = ledger.entries()
    assert sorted(child + parent) == list(range(2, 8)) and [e["seq"] for e in entries] == list(range(1, 8))
    assert ledger.verify().ok


def test_a_kept_postgres_connection_that_went_stale_is_replaced(postgres_dsn, monkeypatch):
    """PostgreSQL appends keep their connection while batches follow each other; if the server drops
    it in between (a restart), the next append begins on a new one instead of failing."""
    monkeypatch.setattr(group_commit, "IDLE_SECONDS", 30.0)
    database = f"ledger_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
        ledger = PostgresLedger(make_conninfo(postgres_dsn, dbname=database), schema="audit")
        assert append(ledger, 0, 0) == 1
        dropped = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", [database]).fetchone()[0]
        assert dropped == 1, "the connection of the last batch is kept"
        assert append(ledger, 0, 1) == 2 and ledger.verify().ok
        ledger.commits.store.let_go()
