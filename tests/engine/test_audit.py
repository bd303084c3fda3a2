"""The ledger: every decision is recorded with who, why, where to, what and how much; a flipped
byte anywhere makes verification fail at that very entry."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import psycopg
import pytest

from fedlake.audit import DuckDBLedger, PostgresLedger, fragment_hash
from tests.conftest import REPO


def fill(ledger, n=5):
    for i in range(n):
        ledger.record(
            requester="coordinator", purpose="analytics", silo="sg_lake", destination="EU", operation="query",
            fragment=f"SELECT {i}", columns=[{"output": "x", "action": "allow"}], decision="allowed" if i % 2 else "denied",
            rows=i * 10, nbytes=i * 100,
        )


@pytest.fixture(params=["duckdb", "postgres"])
def ledger(request, tmp_path):
    if request.param == "duckdb":
        return DuckDBLedger(tmp_path / "audit.duckdb")
    dsn = request.getfixturevalue("postgres_dsn")
    schema = f"audit_{tmp_path.name[-8:]}".replace("-", "_").lower()
    return PostgresLedger(dsn, schema=schema)


def tamper(ledger, seq: int, column: str, value) -> None:
    if isinstance(ledger, DuckDBLedger):
        with duckdb.connect(str(ledger.path)) as db:
            db.execute(f"UPDATE audit_ledger SET {column} = ? WHERE seq = ?", [value, seq])
    else:
        with psycopg.connect(ledger.dsn, autocommit=True) as conn:
            conn.execute(f'UPDATE "{ledger.schema}".audit_ledger SET {column} = %s WHERE seq = %s', (value, seq))


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
    assert "free_text" in json.loads(new[1]["columns"])[0]["rules"][0]
    assert ledger.verify().ok
