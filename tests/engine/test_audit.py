"""The ledger: every decision is recorded with who, why, where to, what and how much, in one signed
hash chain per writer whose head is witnessed elsewhere. The attacks below are an insider's, with
write access to the table and fedlake's code but not the writers' private keys."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading

import duckdb
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlake.audit import GENESIS, LEGACY_CHAIN, Budget, BudgetExceeded, DuckDBLedger, PostgresLedger, entry_hash, fragment_hash
from fedlake.signing import public_keys, signing_key
from tests.conftest import REPO

SINCE = "2000-01-01T00:00:00+00:00"


def fill(ledger, n=5, silo="sg_lake"):
    for i in range(n):
        ledger.record(
            requester="coordinator", purpose="analytics", silo=silo, destination="EU", operation="query",
            fragment=f"SELECT {i}", columns=[{"output": "x", "action": "allow"}], decision="allowed" if i % 2 else "denied",
            rows=i * 10, nbytes=i * 100,
        )


def charge(ledger, epsilon, budget=None, requester="analyst", silo="us_lake"):
    return ledger.record(
        requester=requester, purpose="analytics", silo=silo, destination="EU", operation="query", fragment="SELECT count(*)",
        columns=[{"output": "n", "action": "aggregate"}], decision="aggregated", epsilon=epsilon, delta=1e-7, budget=budget,
    )


@pytest.fixture(params=["duckdb", "postgres"])
def ledger(request, tmp_path):
    if request.param == "duckdb":
        return DuckDBLedger(tmp_path / "audit.duckdb")
    dsn = request.getfixturevalue("postgres_dsn")
    schema = f"audit_{tmp_path.name[-8:]}".replace("-", "_").lower()
    return PostgresLedger(dsn, schema=schema)


def writer(ledger, signer):
    """Another process's view of the same ledger, appending with its own key."""
    if isinstance(ledger, DuckDBLedger):
        return DuckDBLedger(ledger.path, signer=signer)
    return PostgresLedger(ledger.dsn, schema=ledger.schema, signer=signer)


def raw(ledger, statement: str, params=()) -> list[tuple]:
    """SQL straight on the ledger's table, as an insider with write access would run it."""
    if isinstance(ledger, DuckDBLedger):
        with duckdb.connect(str(ledger.path)) as db:
            return db.execute(statement.format(table="audit_ledger"), list(params)).fetchall()
    with psycopg.connect(ledger.dsn, autocommit=True) as conn:
        cursor = conn.execute(statement.format(table=f'"{ledger.schema}".audit_ledger').replace("?", "%s"), list(params))
        return cursor.fetchall() if cursor.description else []


def tamper(ledger, seq: int, column: str, value) -> None:
    raw(ledger, f"UPDATE {{table}} SET {column} = ? WHERE seq = ?", [value, seq])


def rechain(ledger, entries, signer=None) -> None:
    """Renumber and rehash the given entries from scratch, re-signing only with a key of one's own."""
    raw(ledger, "DELETE FROM {table}")
    heads = {}
    for position, entry in enumerate(entries, start=1):
        chain_seq, previous = heads.get(entry["chain"], (0, GENESIS))
        entry = {**entry, "seq": position, "chain_seq": chain_seq + 1, "prev_hash": previous}
        entry["entry_hash"] = entry_hash(entry)
        if signer:
            entry["signature"] = signer.sign(bytes.fromhex(entry["entry_hash"])).hex()
        heads[entry["chain"]] = (chain_seq + 1, entry["entry_hash"])
        raw(ledger, f"INSERT INTO {{table}} ({', '.join(entry)}) VALUES ({', '.join('?' for _ in entry)})", list(entry.values()))


@pytest.fixture
def keys():
    return {name: Ed25519PrivateKey.generate() for name in ("us_lake", "coordinator")}


def public(keys):
    return {name: key.public_key() for name, key in keys.items()}


def witnessed_ledger(ledger, keys, before=5, after=0):
    """us_lake appends `before` entries, the coordinator witnesses its head, us_lake appends `after` more."""
    us, coordinator = writer(ledger, keys["us_lake"]), writer(ledger, keys["coordinator"])
    fill(us, before, silo="us_lake")
    coordinator.witness("coordinator", {"us_lake": us.head("us_lake")})
    fill(us, after, silo="us_lake")
    return us, coordinator


def test_entries_carry_the_whole_decision(ledger):
    fill(ledger)
    entries = ledger.entries()
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    third = entries[2]
    assert third["fragment_sha256"] == fragment_hash("SELECT 2")
    assert (third["requester"], third["purpose"], third["silo"], third["destination"]) == ("coordinator", "analytics", "sg_lake", "EU")
    assert json.loads(third["columns"]) == [{"output": "x", "action": "allow"}]
    assert (third["decision"], third["rows"], third["bytes"]) == ("denied", 20, 200)
    assert third["prev_hash"] == entries[1]["entry_hash"]
    assert ledger.verify().ok


@pytest.mark.parametrize(
    "column, change",
    [("rows", lambda v: v + 1), ("decision", lambda v: "allowed" if v == "denied" else "denied"),
     ("purpose", lambda v: v[:-1] + chr(ord(v[-1]) ^ 1)), ("entry_hash", lambda v: ("1" if v[0] != "1" else "2") + v[1:])],
)
def test_one_flipped_byte_breaks_the_chain_at_that_entry(ledger, column, change):
    fill(ledger)
    original = ledger.entries()[2][column]
    tamper(ledger, 3, column, change(original))
    result = ledger.verify()
    assert not result.ok and result.first_broken == 3
    assert "entry 3" in str(result)


def test_entries_after_a_point_read_only_the_new_ones(ledger):
    assert ledger.last_seq() == 0 and ledger.entries() == []
    fill(ledger, 3)
    mark = ledger.last_seq()
    fill(ledger, 2)
    assert mark == 3 and ledger.last_seq() == 5
    assert [e["seq"] for e in ledger.entries(after=mark)] == [4, 5]


def test_a_deleted_entry_is_found(ledger):
    fill(ledger)
    if isinstance(ledger, DuckDBLedger):
        with duckdb.connect(str(ledger.path)) as db:
            db.execute("DELETE FROM audit_ledger WHERE seq = 2")
    else:
        with psycopg.connect(ledger.dsn, autocommit=True) as conn:
            conn.execute(f'DELETE FROM "{ledger.schema}".audit_ledger WHERE seq = 2')
    result = ledger.verify()
    assert not result.ok and result.first_broken == 2


def test_cli_verify_exits_non_zero_and_names_the_entry(tmp_path):
    ledger = DuckDBLedger(tmp_path / "governed" / "audit.duckdb")
    fill(ledger, 4)
    env = {"FEDLAKE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-m", "fedlake.cli", "audit", "verify"], cwd=REPO, env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "intact: 4 entries" in ok.stdout
    tamper(ledger, 2, "bytes", 999)
    broken = subprocess.run([sys.executable, "-m", "fedlake.cli", "audit", "verify"], cwd=REPO, env=env, capture_output=True, text=True)
    assert broken.returncode == 1 and "BROKEN at entry 2" in broken.stdout


def test_cli_verify_checks_signatures_and_witnessed_heads(tmp_path):
    ledger_path = tmp_path / "governed" / "audit.duckdb"
    us = DuckDBLedger(ledger_path, signer=signing_key(tmp_path, "us_lake"))
    fill(us, 4, silo="us_lake")
    DuckDBLedger(ledger_path, signer=signing_key(tmp_path, "coordinator")).witness("coordinator", {"us_lake": us.head("us_lake")})
    fill(DuckDBLedger(ledger_path), 1, silo="sg_lake")
    env = {"FEDLAKE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    verify = [sys.executable, "-m", "fedlake.cli", "audit", "verify"]
    ok = subprocess.run(verify, cwd=REPO, env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "intact: 6 entries in 3 chains, 5 signatures and 1 witnessed heads verified" in ok.stdout
    assert "no public key for chains sg_lake" in ok.stdout
    strict = subprocess.run([*verify, "--require-signatures"], cwd=REPO, env=env, capture_output=True, text=True)
    assert strict.returncode == 1 and "chain sg_lake: no public key" in strict.stdout
    raw(us, "DELETE FROM {table} WHERE chain = 'us_lake' AND chain_seq > 2")
    cut = subprocess.run(verify, cwd=REPO, env=env, capture_output=True, text=True)
    assert cut.returncode == 1 and "chain us_lake: entries 3..4 are missing: witnessed head seq 4 by coordinator at its entry 1" in cut.stdout


def test_chains_are_numbered_per_writer_and_signed(ledger, keys):
    us, coordinator = witnessed_ledger(ledger, keys, before=3, after=2)
    fill(ledger, 2, silo="sg_lake")
    entries = ledger.entries()
    assert [e["seq"] for e in entries] == list(range(1, 9)) and ledger.last_seq() == 8
    assert [(e["chain"], e["chain_seq"]) for e in entries] == [
        ("us_lake", 1), ("us_lake", 2), ("us_lake", 3), ("coordinator", 1), ("us_lake", 4), ("us_lake", 5), ("sg_lake", 1), ("sg_lake", 2)]
    assert [e["chain_seq"] for e in ledger.entries(chain="us_lake", after=4)] == [4, 5]
    assert all(e["signature"] for e in entries[:6]) and not any(e["signature"] for e in entries[6:])
    result = ledger.verify(public(keys))
    assert result.ok and (result.chains, result.signatures, result.witnessed) == (3, 6, 1) and result.unsigned == ("sg_lake",)
    assert "intact: 8 entries in 3 chains, 6 signatures and 1 witnessed heads verified" in str(result)
    required = ledger.verify(public(keys), require_signatures=True)
    assert not required.ok and required.chain == "sg_lake" and "chain sg_lake: no public key" in str(required)


def test_head_and_witness_round_trip(ledger):
    assert ledger.head("us_lake") == (0, GENESIS) and ledger.heads() == {}
    fill(ledger, 3, silo="us_lake")
    fill(ledger, 1, silo="sg_lake")
    us_head = ledger.head("us_lake")
    assert us_head == (3, ledger.entries(chain="us_lake")[-1]["entry_hash"])
    seq = ledger.witness("coordinator", ledger.heads())
    [entry] = ledger.entries(after=seq - 1)
    assert (entry["chain"], entry["chain_seq"], entry["operation"], entry["decision"], entry["purpose"]) == (
        "coordinator", 1, "witness", "witnessed", "audit")
    assert json.loads(entry["columns"]) == [{"chain": "sg_lake", "seq": 1, "hash": ledger.head("sg_lake")[1]},
                                            {"chain": "us_lake", "seq": 3, "hash": us_head[1]}]
    assert ledger.heads()["coordinator"] == (1, entry["entry_hash"])
    assert ledger.verify().witnessed == 2


def test_truncating_a_witnessed_chain_names_the_missing_entries(ledger, keys):
    witnessed_ledger(ledger, keys, before=8)
    raw(ledger, "DELETE FROM {table} WHERE chain = 'us_lake' AND chain_seq > 5")
    result = ledger.verify(public(keys))
    assert not result.ok
    assert "chain us_lake: entries 6..8 are missing: witnessed head seq 8 by coordinator at its entry 1" in result.problems


def test_cutting_the_ledgers_tail_shows_against_heads_kept_outside(ledger, keys):
    """Deleting the last entries of the whole ledger, witness included, leaves no gap inside it: the
    heads Dagster kept outside still show what is missing."""
    witnessed_ledger(ledger, keys, before=4, after=3)
    outside = {"dagster": ledger.heads()}
    raw(ledger, "DELETE FROM {table} WHERE seq > 5")
    assert ledger.verify(public(keys)).ok
    result = ledger.verify(public(keys), witnessed=outside)
    assert not result.ok and result.chain == "us_lake" and result.first_broken is None
    assert "chain us_lake: entries 5..7 are missing: witnessed head seq 7 by dagster, outside the ledger" in result.problems


@pytest.mark.parametrize("keep_signatures", [True, False])
def test_deleting_and_rechaining_without_the_key_fails_the_signatures(ledger, keys, keep_signatures):
    witnessed_ledger(ledger, keys, before=3, after=3)
    kept = [e for e in ledger.entries() if not (e["chain"] == "us_lake" and e["chain_seq"] == 2)]
    rechain(ledger, kept if keep_signatures else [e if n == 0 else {**e, "signature": ""} for n, e in enumerate(kept)])
    result = ledger.verify(public(keys))
    assert not result.ok and result.first_broken == 2 and result.chain == "us_lake"
    expected = "its signature does not verify" if keep_signatures else "unsigned, though its chain has a public key"
    assert f"chain us_lake, its entry 2: {expected}" in str(result)


def test_rechaining_without_keys_is_caught_by_the_witnesses(ledger, keys):
    witnessed_ledger(ledger, keys, before=3)
    outside = {"dagster": ledger.heads()}
    rechain(ledger, [e for e in ledger.entries() if not (e["chain"] == "us_lake" and e["chain_seq"] == 3)])
    result = ledger.verify()
    assert not result.ok and "chain us_lake: entry 3 is missing: witnessed head seq 3 by coordinator at its entry 1" in result.problems
    rechain(ledger, [e if e["chain"] == "us_lake" else {**e, "columns": "[]"} for e in ledger.entries()])
    assert ledger.verify().ok, "an insider who rewrites the witness entry too hides the cut from the ledger alone"
    result = ledger.verify(witnessed=outside)
    assert "chain us_lake: entry 3 is missing: witnessed head seq 3 by dagster, outside the ledger" in result.problems
    assert ("chain coordinator: its entry 1 was rewritten: its hash differs from the head witnessed by dagster, "
            "outside the ledger") in result.problems


def test_re_signing_with_another_key_fails(ledger, keys):
    witnessed_ledger(ledger, keys, before=3)
    entries = ledger.entries()
    entries[1] = {**entries[1], "decision": "allowed", "rows": 10_000}
    rechain(ledger, entries, signer=Ed25519PrivateKey.generate())
    result = ledger.verify(public(keys))
    assert not result.ok and result.first_broken == 1
    assert "chain us_lake, its entry 1: its signature does not verify with its chain's public key" in str(result)
    assert any("chain coordinator, its entry 1: its signature does not verify" in p for p in result.problems)


@pytest.mark.parametrize("column, value", [("epsilon", 0.5), ("error", "E42 hidden"), ("chain_seq", 7), ("signature", "00" * 64)])
def test_editing_a_signed_entry_fails_naming_it(ledger, keys, column, value):
    witnessed_ledger(ledger, keys, before=4)
    tamper(ledger, 2, column, value)
    result = ledger.verify(public(keys))
    assert not result.ok and result.first_broken == 2 and "BROKEN at entry 2" in str(result)


def test_concurrent_charges_never_exceed_the_budget(ledger):
    budget = Budget(epsilon=5.0, delta=1e-5, since=SINCE)
    assert ledger.last_seq() == 0
    outcomes = []

    def one_charge():
        try:
            outcomes.append(charge(writer(ledger, None), 1.0, budget))
        except BudgetExceeded as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=one_charge) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(isinstance(o, int) for o in outcomes) == 5 and sum(isinstance(o, BudgetExceeded) for o in outcomes) == 15
    decisions = [(e["decision"], e["epsilon"]) for e in ledger.entries()]
    assert decisions.count(("aggregated", 1.0)) == 5 and decisions.count(("over_budget", 0.0)) == 15
    assert ledger.spent("analyst", "analytics", "us_lake", SINCE) == pytest.approx((5.0, 5e-7))
    assert ledger.verify().ok


def test_budget_exceeded_names_spent_requested_and_limit(ledger):
    budget = Budget(epsilon=1.0, delta=1e-5, since=SINCE)
    for _ in range(10):
        charge(ledger, 0.1, budget)
    charge(ledger, 5.0, requester="someone-else")
    charge(ledger, 5.0, silo="sg_lake")
    ledger.record(requester="analyst", purpose="analytics", silo="us_lake", destination="EU", operation="query",
                  fragment="SELECT 1", columns=[], decision="denied", epsilon=3.0)
    with pytest.raises(BudgetExceeded) as refused:
        charge(ledger, 0.25, budget)
    assert str(refused.value) == (f"privacy budget exceeded for analyst / analytics at us_lake since {SINCE}: "
                                  "spent epsilon 1 + requested 0.25 > limit 1")
    assert ledger.entries()[-1]["decision"] == "over_budget"
    assert ledger.spent("analyst", "analytics", "us_lake", "2999-01-01T00:00:00Z") == (0.0, 0.0)
    charge(ledger, 0.25, Budget(epsilon=1.0, delta=1e-5, since="2999-01-01T00:00:00+00:00"))


def test_an_old_ledger_is_migrated_and_still_verifies(ledger):
    old = ("seq BIGINT PRIMARY KEY, recorded_at TEXT NOT NULL, requester TEXT NOT NULL, purpose TEXT NOT NULL, silo TEXT NOT NULL, "
           "destination TEXT NOT NULL, operation TEXT NOT NULL, fragment_sha256 TEXT NOT NULL, columns TEXT NOT NULL, "
           "decision TEXT NOT NULL, rows BIGINT NOT NULL, bytes BIGINT NOT NULL, prev_hash TEXT NOT NULL, entry_hash TEXT NOT NULL")
    if isinstance(ledger, PostgresLedger):
        raw(ledger, f'CREATE SCHEMA IF NOT EXISTS "{ledger.schema}"')
    raw(ledger, f"CREATE TABLE {{table}} ({old})")
    previous = GENESIS
    for seq in (1, 2, 3):
        entry = {"seq": seq, "recorded_at": f"2025-01-0{seq}T00:00:00+00:00", "requester": "coordinator", "purpose": "analytics",
                 "silo": "us_lake", "destination": "EU", "operation": "query", "fragment_sha256": fragment_hash("SELECT 1"),
                 "columns": "[]", "decision": "allowed", "rows": seq, "bytes": 8 * seq, "prev_hash": previous, "chain": LEGACY_CHAIN}
        entry["entry_hash"] = previous = entry_hash(entry)
        del entry["chain"]
        raw(ledger, f"INSERT INTO {{table}} ({', '.join(entry)}) VALUES ({', '.join('?' for _ in entry)})", list(entry.values()))
    migrated = writer(ledger, None)
    fill(migrated, 2, silo="us_lake")
    entries = migrated.entries()
    assert [(e["chain"], e["chain_seq"], e["seq"]) for e in entries] == [
        (LEGACY_CHAIN, 1, 1), (LEGACY_CHAIN, 2, 2), (LEGACY_CHAIN, 3, 3), ("us_lake", 1, 4), ("us_lake", 2, 5)]
    assert (entries[0]["epsilon"], entries[0]["error"], entries[0]["signature"]) == (0.0, "", "")
    assert migrated.verify().ok
    tamper(migrated, 2, "rows", 99)
    assert migrated.verify().first_broken == 2


def test_signing_keys_are_made_once_and_found_by_the_verifier(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDLAKE_SIGNING_KEY", raising=False)
    monkeypatch.delenv("FEDLAKE_LEDGER_KEYS", raising=False)
    made = []
    threads = [threading.Thread(target=lambda: made.append(signing_key(tmp_path, "us_lake"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    path = tmp_path / "keys" / "ledger-us_lake.ed25519"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and sorted(os.listdir(path.parent)) == [path.name, path.name + ".pub"]
    signature = made[0].sign(b"head")
    for key in made:
        key.public_key().verify(signature, b"head")
    assert set(public_keys(tmp_path)) == {"us_lake"}
    public_keys(tmp_path)["us_lake"].verify(signature, b"head")

    monkeypatch.setenv("FEDLAKE_SIGNING_KEY", str(path))
    assert signing_key(None, "anything").sign(b"x") == made[0].sign(b"x")
    monkeypatch.setenv("FEDLAKE_LEDGER_KEYS", str(tmp_path / "elsewhere"))
    assert public_keys(tmp_path) == {}


def test_every_gate_decision_reaches_the_ledger(local_deployment, catalog):
    from fedlake.agent import EgressDenied, ledger_for, local_agent_client
    from fedlake.policy.model import load_policy

    policy = load_policy(REPO / "policies.yaml", catalog)
    client = local_agent_client(catalog, policy, "us_lake", local_deployment.home)
    ledger = ledger_for(local_deployment.home)
    start = len(ledger.entries())
    table = client.query("SELECT national_id FROM customers", "credit_scoring", "EU").read_all()
    with pytest.raises(EgressDenied):
        client.query("SELECT memo FROM transactions", "aml", "EU")
    new = ledger.entries()[start:]
    assert [(e["operation"], e["decision"]) for e in new] == [("query", "rewritten"), ("query", "denied")]
    assert new[0]["rows"] == table.num_rows and new[0]["bytes"] > 0 and new[1]["rows"] == 0
    assert json.loads(new[0]["columns"])[0]["action"] == "pseudonymize"
    assert "free_text" in json.loads(new[1]["columns"])[0]["refused"] and new[1]["error"] == "REFUSED"
    assert ledger.verify().ok
