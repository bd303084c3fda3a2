"""A PostgreSQL silo across a server restart, and under fifty concurrent callers: the first
request after a restart reconnects instead of failing, a write is never run twice, and concurrent
requests do not share a connection."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest

from fedlake.agent import InProcessAgentClient, build_agent, client_token
from fedlake.audit import open_ledger
from fedlake.catalog import load_catalog
from fedlake.errors import SiloError
from fedlake.policy.model import load_policy
from fedlake.silos import PostgresConnector, metadata
from fedlake.silos.pg_connections import POOL_SIZE
from tests.services import postgres_server, restart_postgres

REPO = Path(__file__).resolve().parents[2]
LOANS = pa.table({"loan_id": [f"L{i}" for i in range(500)], "principal": [float(i) for i in range(500)]})
TOTAL = float(sum(range(500)))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server of this module's own: restarting the session's would cut every other test's connections."""
    root = tmp_path_factory.mktemp("restarted_pg")
    with postgres_server(root) as dsn:
        yield dsn, root / "pgdata"


@pytest.fixture
def always_recheck(monkeypatch):
    """Metadata is asked of the server on every call, so that calls after a restart reach it."""
    monkeypatch.setattr(metadata, "RECHECK_SECONDS", 0.0)


def loaded(dsn: str, engine: str = "duckdb") -> PostgresConnector:
    schema = f"s_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    connector = PostgresConnector("eu_restart", "EU", dsn, schema=schema, engine=engine)
    connector.load("loans", LOANS.schema, LOANS.to_batches(max_chunksize=100))
    return connector


def total(connector) -> float:
    return connector.execute("SELECT sum(principal) AS total FROM loans").read_all().column("total")[0].as_py()


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_every_call_after_a_restart_reconnects(server, always_recheck, engine):
    dsn, pgdata = server
    connector = loaded(dsn, engine)
    assert connector.list_tables() == ["loans"] and total(connector) == TOTAL
    restart_postgres(pgdata)
    assert connector.list_tables() == ["loans"]
    assert connector.row_count("loans") == 500
    assert total(connector) == TOTAL
    assert connector.estimate_rows("SELECT loan_id FROM loans WHERE principal > 250") > 0
    restart_postgres(pgdata)
    made = connector.materialize("big_loans", "SELECT loan_id FROM loans WHERE principal >= 400")
    assert made.rows == 100 and connector.row_count("big_loans") == 100
    connector.close()


def test_the_first_query_through_an_agent_after_a_restart_succeeds(server, always_recheck, tmp_path):
    dsn, pgdata = server
    catalog = load_catalog(REPO / "silos.yaml")
    policy = load_policy(REPO / "policies.yaml", catalog)
    agent = build_agent(catalog, policy, "eu_core", "local", tmp_path, connector=loaded(dsn),
                        ledger=open_ledger(str(tmp_path / "audit.duckdb")))
    client = InProcessAgentClient(agent, client_token(policy, "coordinator", "local", tmp_path))
    sql = "SELECT loan_id, principal FROM loans WHERE principal >= 490"
    before = client.query(sql, "credit_scoring", "EU").read_all()
    restart_postgres(pgdata)
    after = client.query(sql, "credit_scoring", "EU").read_all()
    assert after.num_rows == 10 and after.sort_by("loan_id").equals(before.sort_by("loan_id"))
    client.close()


def test_a_write_whose_connection_dies_is_not_run_again(server):
    """The server ends the writer's backend in the middle of a materialization: the caller gets
    one error naming the silo, and the table was not made behind its back by a second run."""
    dsn, _ = server
    connector = loaded(dsn)
    marker = uuid.uuid4().hex

    def terminate_the_write() -> None:
        with psycopg.connect(dsn, autocommit=True) as owner:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                ended = owner.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
                    (f"%{marker}%",),
                ).fetchall()
                if ended:
                    return
                time.sleep(0.05)

    killer = threading.Thread(target=terminate_the_write)
    killer.start()
    with pytest.raises(SiloError, match="silo eu_restart: materializing slow failed"):
        connector.materialize("slow", f"SELECT '{marker}' AS m, pg_sleep(30) IS NULL AS slept")
    killer.join()
    assert "slow" not in connector.list_tables()
    assert total(connector) == TOTAL, "the connector goes on after its connection was killed"
    connector.close()


def test_fifty_concurrent_callers_neither_stall_nor_mix_answers(server):
    """Fifty threads ask the same connector for metadata, estimates and fragments at once: each
    gets its own answer, within a deadline, while the server holds at most the pool's connections."""
    dsn, _ = server
    connector = loaded(dsn)

    def caller(i: int) -> tuple[int, float, int]:
        low = i * 10
        rows = connector.execute(f"SELECT count(*) AS n FROM loans WHERE principal >= {low}").read_all().column("n")[0].as_py()
        assert connector.schema("loans").names == ["loan_id", "principal"]
        return i, float(rows), connector.estimate_rows(f"SELECT loan_id FROM loans WHERE principal >= {low}") or -1

    started = time.monotonic()
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(caller, range(50), timeout=120))
    assert time.monotonic() - started < 120
    assert [(i, rows) for i, rows, _ in answers] == [(i, float(500 - i * 10)) for i in range(50)]
    assert all(estimate > 0 for _, _, estimate in answers)
    with psycopg.connect(dsn, autocommit=True) as owner:
        held = owner.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fedlake eu_restart'").fetchone()[0]
    assert 1 <= held <= POOL_SIZE, "metadata and estimates use connections lent from a bounded set, not one per call"
    connector.close()
