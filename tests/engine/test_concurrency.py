"""Fifty federated queries at once from one coordinator against the agents over Flight+TLS: every
result is the one a query gets alone, none stalls, and a failing agent fails only the queries that
need it, with an error naming its silo."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from fedlake.agent import FlightAgentClient
from fedlake.errors import FedlakeError
from fedlake.query import Federation
from tests.conftest import TOKENS

QUERIES = [
    # a join across three silos, reduced by semi-joins
    """SELECT c.home_region, count(*) AS loans, sum(l.principal) AS principal
       FROM eu_core.loans l JOIN eu_core.customers c ON c.customer_id = l.customer_id
       JOIN us_lake.customers u ON u.national_id = c.national_id GROUP BY c.home_region""",
    # partial aggregates from two lakes
    """SELECT a.currency, count(*) AS n FROM sg_lake.accounts a JOIN sg_lake.customers c ON c.customer_id = a.customer_id
       GROUP BY a.currency""",
    "SELECT count(*) AS n FROM us_lake.transactions",
    """SELECT s.channel, count(*) AS n FROM sg_lake.transactions s WHERE s.account_id IN (SELECT account_id FROM sg_lake.accounts)
       GROUP BY s.channel""",
    """SELECT count(*) AS n FROM eu_core.customers e JOIN sg_lake.customers s ON s.national_id = e.national_id""",
]


def _federation(deployment) -> Federation:
    ca = deployment.env["FEDLAKE_AGENT_CA"]
    clients = {s: FlightAgentClient(s, deployment.env_location(s), TOKENS["coordinator"], ca, timeout=120)
               for s in deployment.catalog.silos}
    return Federation(deployment.catalog, clients)


def _rows(table) -> list:
    return sorted(table.to_pylist(), key=repr)


def test_fifty_concurrent_queries_are_all_correct(prod_deployment):
    fed = _federation(prod_deployment)
    alone = {sql: _rows(fed.run(sql, "credit_scoring")[0]) for sql in QUERIES}
    work = [QUERIES[i % len(QUERIES)] for i in range(50)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda sql: (sql, _rows(fed.run(sql, "credit_scoring")[0])), work))
    took = time.perf_counter() - started
    assert all(rows == alone[sql] for sql, rows in results)
    assert took < 120, f"fifty queries took {took:.0f} s: something waited for a deadline"


def test_a_dead_agent_fails_only_the_queries_that_need_it_naming_its_silo(prod_deployment, tls, tmp_path):
    from tests.services import agent_process

    env = {**prod_deployment.env, "FEDLAKE_HOME": str(prod_deployment.home)}
    with agent_process("sg_lake", env, tls, tmp_path / "a.log") as (location, process):
        fed = _federation(prod_deployment)
        fed.clients["sg_lake"] = FlightAgentClient("sg_lake", location, TOKENS["coordinator"], tls["ca"], timeout=30)
        process.kill()
        process.wait()

        def one(sql: str) -> str:
            try:
                fed.run(sql, "credit_scoring")
                return "ok"
            except FedlakeError as exc:
                return str(exc)

        with ThreadPoolExecutor(max_workers=10) as pool:
            outcomes = list(pool.map(one, [QUERIES[2], QUERIES[4]] * 5))
    assert outcomes[0::2] == ["ok"] * 5
    assert set(outcomes[1::2]) == {f"silo sg_lake: its agent at {location} is unreachable"}
