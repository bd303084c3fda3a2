"""`fedlake serve` as its own process over TLS on loopback, queried with the ADBC Flight SQL driver
(a client fedlake did not write) as a BI tool or a notebook would: federated results equal the
in-process Federation's for the same identity and purpose; the token decides the identity, the
header the purpose; refusals and errors arrive as one line naming the rule; prepared statements,
table listings and the `FEDLAKE_COORDINATOR` mode of the CLI work; handles are bound to their identity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from adbc_driver_flightsql import DatabaseOptions
from google.protobuf import any_pb2

from fedlake.agent import FlightAgentClient, client_token, ledger_for, local_agent_client
from fedlake.policy.model import load_policy
from fedlake.query import GOVERNED, Federation
from fedlake.serve import messages as m
from fedlake.serve.statements import Handles, UnknownHandle
from tests.conftest import REPO
from tests.services import free_port, stop_process, wait_for_port

COUNT = "SELECT count(*) AS n FROM sg_lake.customers"
# a join across two silos on a public column, and a union over all three
JOIN = ("SELECT e.account_type, e.n AS eu_accounts, u.n AS us_accounts "
        "FROM (SELECT account_type, count(*) AS n FROM eu_core.accounts GROUP BY account_type) AS e "
        "JOIN (SELECT account_type, count(*) AS n FROM us_lake.accounts GROUP BY account_type) AS u "
        "ON e.account_type = u.account_type ORDER BY e.account_type")
UNION = ("SELECT home_region, count(*) AS n FROM (SELECT home_region FROM eu_core.customers UNION ALL "
         "SELECT home_region FROM us_lake.customers UNION ALL SELECT home_region FROM sg_lake.customers) AS c "
         "GROUP BY home_region ORDER BY home_region")
DENIED = "SELECT full_name FROM eu_core.customers"
FULL_NAME_RULE = "policies.yaml: overrides.*.customers.full_name[0]]"  # after "[rule ", the file as the server was given it


@dataclass
class Served:
    location: str
    home: Path
    ca: Path
    tokens: dict[str, str]

    def connect(self, identity: str | None = None, token: str | None = None, purpose: str | None = None):
        options = {
            DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token or self.tokens[identity]}",
            DatabaseOptions.TLS_ROOT_CERTS.value: self.ca.read_text(),
        }
        if purpose:
            options[f"{DatabaseOptions.RPC_CALL_HEADER_PREFIX.value}x-fedlake-purpose"] = purpose
        return flightsql.connect(self.location, db_kwargs=options, autocommit=True)

    def flight_options(self, identity: str) -> flight.FlightCallOptions:
        return flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {self.tokens[identity]}".encode())])


@contextmanager
def serve_process(deployment, tls: dict[str, Path], log: Path) -> Iterator[Served]:
    """`fedlake serve` on a seeded deployment, its own process, TLS on a loopback port."""
    port = free_port()
    command = [
        sys.executable, "-m", "fedlake.cli", "--deployment", deployment.name, "serve", "--host", "127.0.0.1",
        "--port", str(port), "--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"]),
    ]
    env = {**os.environ, "FEDLAKE_HOME": str(deployment.home)}
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(port, timeout=120)
        except RuntimeError:
            raise RuntimeError(f"fedlake serve did not start:\n{log.read_text()}") from None
        policy = load_policy(REPO / "policies.yaml", deployment.catalog)
        tokens = {identity: client_token(policy, identity, deployment.name, deployment.home) for identity in policy.clients}
        yield Served(f"grpc+tls://127.0.0.1:{port}", deployment.home, tls["ca"], tokens)
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def served(local_deployment, tls, tmp_path_factory) -> Iterator[Served]:
    with serve_process(local_deployment, tls, tmp_path_factory.mktemp("serve") / "serve.log") as served:
        yield served


@pytest.fixture(scope="module")
def served_prod(prod_deployment, tls, tmp_path_factory) -> Iterator[Served]:
    """The same over the prod deployment: the server reaches each silo's agent process over Flight."""
    with serve_process(prod_deployment, tls, tmp_path_factory.mktemp("serve-prod") / "serve.log") as served:
        yield served


def in_process(deployment, identity: str, ca: Path | None = None) -> Federation:
    """The Federation the CLI would build in-process, calling the agents as `identity` (over Flight
    for the prod deployment)."""
    policy = load_policy(REPO / "policies.yaml", deployment.catalog)
    if deployment.name == "prod":
        token = client_token(policy, identity, "prod", deployment.home)
        clients = {s: FlightAgentClient(s, deployment.env_location(s), token, ca) for s in deployment.catalog.silos}
    else:
        clients = {s: local_agent_client(deployment.catalog, policy, s, deployment.home, identity=identity)
                   for s in deployment.catalog.silos}
    coordinates = "coordinate" in policy.clients[identity].roles
    return Federation(deployment.catalog, clients, site="auto" if coordinates else GOVERNED, semijoins=coordinates)


def fetch(connection, sql: str) -> pa.Table:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetch_arrow_table()


def error_of(connection, sql: str) -> str:
    with pytest.raises(flightsql.Error) as raised:
        fetch(connection, sql)
    return str(raised.value)


@pytest.mark.parametrize("identity,purpose", [("analyst", "analytics"), ("coordinator", "aml")])
@pytest.mark.parametrize("sql", [COUNT, JOIN, UNION])
def test_federated_results_equal_the_in_process_federation(served, local_deployment, identity, purpose, sql):
    with served.connect(identity, purpose=purpose) as connection:
        got = fetch(connection, sql)
    expected, _ = in_process(local_deployment, identity).run(sql, purpose)
    assert got.column_names == expected.column_names
    assert got.to_pylist() == expected.to_pylist()
    assert got.num_rows > 0


def test_the_agents_ledger_the_client_identity_and_the_coordinator_witnesses(served):
    ledger = ledger_for(served.home)
    before = ledger.last_seq()
    with served.connect("analyst") as connection:
        assert fetch(connection, COUNT).num_rows == 1
    queries = [e for e in ledger.entries(after=before) if e["silo"] == "sg_lake" and e["operation"] == "query"]
    assert [(e["requester"], e["purpose"], e["decision"]) for e in queries] == [("analyst", "analytics", "allowed")]
    # the heads are witnessed once the result has gone, in the background: give it a moment
    deadline = time.monotonic() + 30
    while not (witnessed := [e for e in ledger.entries(after=before, chain="coordinator") if e["operation"] == "witness"]):
        assert time.monotonic() < deadline, "the coordinator witnessed no chain head"
        time.sleep(0.1)
    seen = {c["chain"]: c["seq"] for c in json.loads(witnessed[-1]["columns"])}
    assert seen["sg_lake"] >= queries[0]["chain_seq"]


def test_a_bad_token_is_one_unauthenticated_line(served):
    with served.connect(token="not-a-token") as connection:
        message = error_of(connection, COUNT)
    assert "UNAUTHENTICATED" in message and "fedlake serve: invalid bearer token" in message
    assert "\n" not in message and "Traceback" not in message


def test_a_denied_query_names_the_rule_in_one_line(served):
    with served.connect("analyst") as connection:
        message = error_of(connection, DENIED)
    assert "UNAUTHORIZED" in message and "column full_name of eu_core.customers is denied" in message
    assert FULL_NAME_RULE in message
    assert "\n" not in message and "Traceback" not in message


def test_errors_in_the_query_are_one_line_without_traceback(served):
    with served.connect("analyst") as connection:
        for sql, says in [("SELEC 1", "cannot parse the query"), ("SELECT count(*) FROM nowhere.t", "unknown silo 'nowhere'")]:
            message = error_of(connection, sql)
            assert says in message
            assert "\n" not in message and "Traceback" not in message and "\x1b" not in message


def test_an_engine_error_leaves_as_an_error_id_without_values(served):
    """A cast that fails in the coordinator's residual (it mixes two silos' columns): the client gets
    the error's class and an id, not DuckDB's text, which quotes the value."""
    sql = ("SELECT CAST(e.account_type || u.currency AS INTEGER) AS x FROM eu_core.accounts e "
           "JOIN us_lake.accounts u ON e.account_type = u.account_type")
    with served.connect("analyst") as connection:
        message = error_of(connection, sql)
    assert "the query failed in the coordinator (ConversionException) [error id " in message
    assert "USD" not in message and "checking" not in message and "\n" not in message


def test_the_purpose_header_decides_the_purpose_within_the_identity(served):
    national_ids = "SELECT national_id FROM eu_core.customers ORDER BY national_id LIMIT 3"
    with served.connect("coordinator") as connection:  # no header: its first purpose, credit_scoring
        assert fetch(connection, national_ids).num_rows == 3  # pseudonymized for credit scoring
    with served.connect("coordinator", purpose="analytics") as connection:
        assert "policies.yaml: classifications.pii.direct[1]]" in error_of(connection, national_ids)
    with served.connect("analyst", purpose="aml") as connection:
        message = error_of(connection, COUNT)
    assert "client 'analyst' may not declare purpose 'aml' (may declare: analytics; " in message
    assert "policies.yaml: clients.analyst.purposes)" in message


def test_prepared_statements_execute_and_re_execute(served, local_deployment):
    expected, _ = in_process(local_deployment, "analyst").run(JOIN, "analytics")
    with served.connect("analyst") as connection, connection.cursor() as cursor:
        cursor.adbc_prepare(JOIN)
        for _ in range(2):  # the same prepared statement runs again
            cursor.execute(JOIN)
            assert cursor.fetch_arrow_table().to_pylist() == expected.to_pylist()


def test_explain_answers_the_plan(served):
    with served.connect("analyst") as connection:
        plan = fetch(connection, f"EXPLAIN {JOIN}").column("plan").to_pylist()
    assert plan[0] == "federated query for analytics; results to the governed zone (EU)"
    assert any("at silo us_lake" in line for line in plan) and any("at silo eu_core" in line for line in plan)


def test_tables_are_listed_as_silo_and_table(served, local_deployment):
    declared = {(silo, table) for silo, spec in local_deployment.catalog.silos.items() for table in spec.tables}
    with served.connect("analyst") as connection:
        objects = connection.adbc_get_objects(depth="tables").read_all().to_pylist()
        listed = {(schema["db_schema_name"], table["table_name"])
                  for catalog in objects for schema in catalog["catalog_db_schemas"] for table in schema["db_schema_tables"]}
        assert declared <= listed
        assert {silo for silo, _ in listed} == set(local_deployment.catalog.silos)
        only_sg = connection.adbc_get_objects(depth="tables", db_schema_filter="sg%", table_name_filter="cust%").read_all()
        assert [(s["db_schema_name"], [t["table_name"] for t in s["db_schema_tables"]])
                for c in only_sg.to_pylist() for s in c["catalog_db_schemas"]] == [("sg_lake", ["customers"])]
        schema = connection.adbc_get_table_schema("customers", db_schema_filter="sg_lake")
        assert schema.names == list(local_deployment.catalog.silo("sg_lake").tables["customers"].columns)
        assert schema.field("national_id").metadata[b"fedlake:classification"] == b"pii.direct"
        assert connection.adbc_get_table_types() == ["TABLE"]
        assert connection.adbc_get_info()["vendor_name"] == "fedlake"


def test_handles_belong_to_the_identity_that_made_them(served):
    """A prepared statement or a result made by one identity is unknown to another, and a result
    streams once."""
    client = flight.FlightClient(served.location, tls_root_certs=served.ca.read_bytes())
    coordinator, analyst = served.flight_options("coordinator"), served.flight_options("analyst")
    prepare = flight.Action(m.CREATE_PREPARED_STATEMENT, m.pack(m.ActionCreatePreparedStatementRequest(query=COUNT)))
    [answer] = list(client.do_action(prepare, coordinator))
    handle = m.unpack(answer.body.to_pybytes()).prepared_statement_handle
    prepared = flight.FlightDescriptor.for_command(m.pack(m.CommandPreparedStatementQuery(prepared_statement_handle=handle)))
    with pytest.raises(flight.FlightServerError, match="no such prepared statement"):
        client.get_flight_info(prepared, analyst)
    info = client.get_flight_info(prepared, coordinator)
    ticket = info.endpoints[0].ticket
    with pytest.raises(flight.FlightServerError, match="no such query result"):
        client.do_get(ticket, analyst).read_all()
    assert client.do_get(ticket, coordinator).read_all().column("n").to_pylist()[0] > 0
    with pytest.raises(flight.FlightServerError, match="no such query result"):
        client.do_get(ticket, coordinator).read_all()
    update = any_pb2.Any(type_url=f"{m.TYPE_URL_PREFIX}{m.PACKAGE}.CommandStatementUpdate").SerializeToString()
    with pytest.raises(flight.FlightServerError, match="does not serve arrow.flight.protocol.sql.CommandStatementUpdate"):
        client.get_flight_info(flight.FlightDescriptor.for_command(update), coordinator)
    client.close()


def test_handles_are_bounded_per_identity_and_expire():
    dropped = []
    handles = Handles("query result", ttl_seconds=3600, per_identity=2, on_drop=dropped.append)
    first, second = handles.add("analyst", "r1"), handles.add("analyst", "r2")
    other = handles.add("coordinator", "r3")
    handles.add("analyst", "r4")  # the analyst's oldest goes; the coordinator's stays
    assert dropped == ["r1"]
    with pytest.raises(UnknownHandle):
        handles.get("analyst", first)
    assert handles.get("analyst", second) == "r2" and handles.get("coordinator", other) == "r3"
    stale = Handles("prepared statement", ttl_seconds=0, per_identity=8, on_drop=dropped.append)
    old = stale.add("analyst", "s1")
    stale.add("analyst", "s2")  # adding sweeps what outlived its time
    with pytest.raises(UnknownHandle, match="no such prepared statement"):
        stale.get("analyst", old)
    assert "s1" in dropped


def run_cli(served: Served, sql: str, home: Path, token: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FEDLAKE_COORDINATOR": served.location, "FEDLAKE_TOKEN": token,
           "FEDLAKE_COORDINATOR_CA": str(served.ca), "FEDLAKE_HOME": str(home)}
    command = [sys.executable, "-m", "fedlake.cli", "query", sql, "--purpose", "analytics"]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_cli_queries_through_the_coordinator_when_one_is_named(served, local_deployment, tmp_path):
    # an empty data folder: only the coordinator can answer from the seeded silos
    expected, _ = in_process(local_deployment, "analyst").run(COUNT, "analytics")
    done = run_cli(served, COUNT, tmp_path, served.tokens["analyst"])
    assert done.returncode == 0, done.stderr
    assert str(expected.column("n")[0].as_py()) in done.stdout
    assert not (tmp_path / "governed").exists()

    denied = run_cli(served, DENIED, tmp_path, served.tokens["analyst"])
    assert denied.returncode == 2
    [line] = denied.stderr.strip().splitlines()
    assert line.startswith(f"fedlake: error: coordinator {served.location}: egress from eu_core")
    assert line.endswith(FULL_NAME_RULE)

    refused = run_cli(served, COUNT, tmp_path, "not-a-token")
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"fedlake: error: coordinator {served.location}: fedlake serve: invalid bearer token"


def test_without_tls_it_listens_on_loopback_only(local_deployment):
    command = [sys.executable, "-m", "fedlake.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())]
    env = {**os.environ, "FEDLAKE_HOME": str(local_deployment.home)}
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("fedlake: error: fedlake serve: bearer tokens would cross the network in clear on "
                                   "0.0.0.0: give --tls-cert and --tls-key (without TLS it listens on loopback only: "
                                   "127.0.0.1, localhost, ::1)")


@pytest.mark.prod
def test_over_flight_agents_concurrent_clients_get_the_in_process_results(served_prod, prod_deployment, tls):
    """Prod: the server calls each silo's agent process over Flight as the client's identity; eight
    queries from four connections at once all equal the in-process Federation's results."""
    expected = {sql: in_process(prod_deployment, "analyst", tls["ca"]).run(sql, "analytics")[0].to_pylist()
                for sql in (COUNT, JOIN, UNION)}

    def client(sqls: list[str]) -> list[list[dict]]:
        with served_prod.connect("analyst") as connection:
            return [fetch(connection, sql).to_pylist() for sql in sqls]

    work = [[COUNT, JOIN], [UNION, COUNT], [JOIN, UNION], [COUNT, UNION]]
    with ThreadPoolExecutor(len(work)) as pool:
        answers = list(pool.map(client, work))
    for sqls, got in zip(work, answers):
        assert got == [expected[sql] for sql in sqls]
    with served_prod.connect("analyst") as connection:
        assert FULL_NAME_RULE in error_of(connection, DENIED)
