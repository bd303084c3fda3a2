"""The agents as separate processes over TLS on loopback: who may call, what the calls say, and
what a dead agent looks like to its caller."""

from __future__ import annotations

import json
import re

import pyarrow.flight as flight
import pytest

from fedlake.agent import EgressDenied, FlightAgentClient, Unauthenticated
from fedlake.agent.client import AgentUnavailable
from fedlake.agent.protocol import Import, LocalFragment, PlanFragment, Redeem, RedeemTransfer, RunResidual
from fedlake.errors import FedlakeError
from tests.conftest import TOKENS


def client(deployment, silo="eu_core", token=TOKENS["coordinator"]):
    return FlightAgentClient(silo, deployment.env_location(silo), token, deployment.env["FEDLAKE_AGENT_CA"], timeout=30)


@pytest.mark.parametrize("token", [None, "", "not-a-token", TOKENS["coordinator"][:-1]], ids=["none", "empty", "wrong", "truncated"])
def test_calls_without_a_valid_token_are_refused(prod_deployment, token):
    raw = flight.FlightClient(prod_deployment.env_location("eu_core"), tls_root_certs=open(prod_deployment.env["FEDLAKE_AGENT_CA"], "rb").read())
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    options = flight.FlightCallOptions(headers=headers, timeout=30)
    descriptor = flight.FlightDescriptor.for_command(json.dumps({"sql": "SELECT count(*) FROM loans", "purpose": "analytics", "destination": "EU"}))
    with pytest.raises(flight.FlightUnauthenticatedError):
        raw.get_flight_info(descriptor, options)
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(raw.do_action(flight.Action("list_tables", b"{}"), options))
    with pytest.raises(flight.FlightUnauthenticatedError):
        raw.do_get(flight.Ticket(descriptor.command), options).read_all()
    raw.close()
    with pytest.raises(Unauthenticated, match="invalid bearer token|no bearer token"):
        client(prod_deployment, token=token or "x").list_tables()


def test_plaintext_against_a_tls_agent_is_refused(prod_deployment):
    location = prod_deployment.env_location("us_lake").replace("grpc+tls://", "grpc+tcp://")
    plain = FlightAgentClient("us_lake", location, TOKENS["coordinator"], None, timeout=10)
    with pytest.raises(FedlakeError):
        plain.list_tables()


def test_a_certificate_from_another_ca_is_refused(prod_deployment, tmp_path):
    from fedlake.agent.tls import make_tls

    other = make_tls(tmp_path / "other")
    stranger = FlightAgentClient("sg_lake", prod_deployment.env_location("sg_lake"), TOKENS["coordinator"], other["ca"], timeout=10)
    with pytest.raises(FedlakeError):
        stranger.list_tables()


def test_flight_info_estimates_before_anything_runs(prod_deployment):
    c = client(prod_deployment)
    before = c.egress()
    info = c.estimate("SELECT loan_id, principal FROM loans", "credit_scoring", "EU")
    assert info.rows >= prod_deployment.report.rows["eu_core"]["loans"] and info.bytes > 0
    assert info.schema.names == ["loan_id", "principal"] and info.silo == "eu_core"
    assert [c.action for c in info.decision.columns] == ["allow", "allow"]
    assert c.egress() == before
    # the plan is the agent's: redeeming its ticket runs it without planning it again, once
    assert c.fetch(info.ticket).read_all().num_rows == prod_deployment.report.rows["eu_core"]["loans"]
    with pytest.raises(FedlakeError, match="unknown, spent or expired ticket"):
        c.fetch(info.ticket).read_all()
    with pytest.raises(FedlakeError, match="unknown, spent or expired ticket"):
        client(prod_deployment, token=TOKENS["analyst"]).fetch(c.estimate("SELECT loan_id FROM loans", "credit_scoring").ticket)


def test_statistics_withhold_min_and_max_of_personal_data(prod_deployment):
    stats = client(prod_deployment, "us_lake").statistics("customers", "analytics", "EU")
    by_name = {col["name"]: col for col in stats["columns"]}
    assert stats["rows"] == prod_deployment.report.rows["us_lake"]["customers"]
    # denied columns are absent, pseudonymized and generalized ones show no extremes, and
    # aggregate-only ones only their type: statistics are computed over the caller's masks
    assert by_name["national_id"]["masked"] == "deny" and by_name["email"]["distinct"] is None
    assert by_name["customer_id"]["min"] is None and by_name["customer_id"]["distinct"] == stats["rows"]
    assert by_name["postcode"]["max"] is None and by_name["postcode"]["distinct"] <= 100
    assert by_name["income"]["masked"] == "aggregate" and by_name["income"]["min"] is None
    assert by_name["home_region"]["min"] in ("EU", "SG", "US")


def test_actions_are_registered_and_unknown_ones_named(prod_deployment):
    c = client(prod_deployment, "sg_lake")
    assert set(c.list_tables()) >= {"customers", "accounts", "transactions", "aml_cases"}
    with pytest.raises(FedlakeError, match="unknown action 'drop_everything'"):
        c.action("drop_everything")


def test_a_dead_agent_is_a_clear_error(prod_deployment, tls, tmp_path):
    from tests.services import agent_process

    with agent_process("sg_lake", {**prod_deployment.env, "FEDLAKE_HOME": str(prod_deployment.home)}, tls, tmp_path / "a.log") as (location, process):
        short_lived = FlightAgentClient("sg_lake", location, TOKENS["coordinator"], tls["ca"], timeout=10)
        assert "customers" in short_lived.list_tables()
        process.kill()
        process.wait()
        with pytest.raises(AgentUnavailable) as dead:
            short_lived.list_tables()
        assert str(dead.value) == f"silo sg_lake: its agent at {location} is unreachable"


def test_semijoin_keys_reduce_a_planned_fragment_over_flight(prod_deployment):
    """Keys attached to a planned fragment's ticket (DoPut) reduce it inside the silo to the rows
    whose (pseudonymized) key is among them; keys for a column it does not send, of the wrong
    family or for someone else's ticket are refused in one line."""
    import pyarrow as pa

    from fedlake.keyset import KeySet

    c = client(prod_deployment)
    sql = "SELECT customer_id, income FROM customers"
    everyone = c.query(sql, "credit_scoring", "EU").read_all()
    chosen = everyone.column("customer_id").slice(0, 25)
    planned = c.estimate(sql, "credit_scoring")
    c.attach_keys(planned.ticket, "customer_id", KeySet.of(chosen, "text"), "customers.customer_id = x.id")
    kept = c.fetch(planned.ticket).read_all()
    assert sorted(kept.column("customer_id").to_pylist()) == sorted(chosen.to_pylist())
    assert kept.num_rows == 25 and isinstance(kept, pa.Table)

    planned = c.estimate(sql, "credit_scoring")
    with pytest.raises(FedlakeError, match="semi-join keys name column 'nope'"):
        c.attach_keys(planned.ticket, "nope", KeySet.of(chosen, "text"))
    with pytest.raises(FedlakeError, match="semi-join keys are integer, column 'customer_id' is string"):
        c.attach_keys(planned.ticket, "customer_id", KeySet.of(pa.array([1, 2]), "integer"))
    with pytest.raises(FedlakeError, match="unknown, spent or expired ticket"):
        client(prod_deployment, token=TOKENS["analyst"]).attach_keys(planned.ticket, "customer_id", KeySet.of(chosen, "text"))
    assert c.fetch(planned.ticket).read_all().num_rows == everyone.num_rows


def test_a_transfer_capability_over_flight_redeems_one_stream_and_nothing_else(prod_deployment):
    """A peer agent presenting a capability gets the one fragment it was made for, once; no other
    call, and no made-up capability, gets anything."""
    sql = "SELECT customer_id, income FROM customers"
    ticket = client(prod_deployment).prepare_transfer(sql, "credit_scoring", "us_lake")
    raw = flight.FlightClient(prod_deployment.env_location("eu_core"), tls_root_certs=open(prod_deployment.env["FEDLAKE_AGENT_CA"], "rb").read())

    def options(capability: str) -> flight.FlightCallOptions:
        return flight.FlightCallOptions(headers=[(b"authorization", f"Capability {capability}".encode())], timeout=30)

    transfer = flight.Ticket(RedeemTransfer(ticket).to_wire())
    with pytest.raises(flight.FlightUnauthorizedError, match="does not allow action 'list_tables'"):
        list(raw.do_action(flight.Action("list_tables", b"{}"), options(ticket)))
    descriptor = flight.FlightDescriptor.for_command(PlanFragment("SELECT * FROM loans", "credit_scoring").to_wire())
    with pytest.raises(flight.FlightUnauthorizedError, match="only redeems"):
        raw.get_flight_info(descriptor, options(ticket))
    with pytest.raises(flight.FlightUnauthorizedError, match="redeems only the fragment it was made for"):
        raw.do_get(flight.Ticket(Redeem("0" * 64).to_wire()), options(ticket)).read_all()
    with pytest.raises(flight.FlightServerError, match="protocol version 1 is not spoken here"):
        raw.do_get(flight.Ticket(json.dumps({"v": 1, "kind": "redeem", "ticket": ticket})), options(ticket)).read_all()
    got = raw.do_get(transfer, options(ticket)).read_all()
    assert got.column_names == ["customer_id", "income"] and got.num_rows == prod_deployment.report.rows["eu_core"]["customers"]
    with pytest.raises(flight.FlightUnauthenticatedError, match="unknown, spent or expired"):
        raw.do_get(transfer, options(ticket)).read_all()
    with pytest.raises(flight.FlightUnauthenticatedError, match="unknown, spent or expired"):
        raw.do_get(flight.Ticket(RedeemTransfer("f" * 64).to_wire()), options("f" * 64)).read_all()
    raw.close()


def test_a_residual_placed_in_a_silo_over_flight(prod_deployment):
    """The residual forced into us_lake's agent process: eu_core and sg_lake send their fragments
    straight to it over TLS, the result equals the one computed at the governed zone, and the ledger
    shows each crossing."""
    from fedlake.audit import open_ledger
    from fedlake.query import GOVERNED, Federation

    catalog = prod_deployment.catalog
    clients = {s: client(prod_deployment, s) for s in catalog.silos}
    sql = """WITH seen AS (SELECT c.national_id, count(*) AS n FROM us_lake.transactions t
                 JOIN us_lake.accounts a ON a.account_id = t.account_id JOIN us_lake.customers c ON c.customer_id = a.customer_id
                 GROUP BY c.national_id)
             SELECT l.loan_id, l.principal, coalesce(seen.n, 0) AS us_transactions, coalesce(sg.n, 0) AS sg_accounts
             FROM eu_core.loans l JOIN eu_core.customers c ON c.customer_id = l.customer_id
             LEFT JOIN seen ON seen.national_id = c.national_id
             LEFT JOIN (SELECT c.national_id, count(*) AS n FROM sg_lake.accounts a
                        JOIN sg_lake.customers c ON c.customer_id = a.customer_id GROUP BY c.national_id) sg
                    ON sg.national_id = c.national_id"""
    ledger = open_ledger(prod_deployment.env["FEDLAKE_LEDGER"])
    before = ledger.last_seq()
    placed_table, placed = Federation(catalog, clients, site="us_lake").run(sql, "credit_scoring")
    governed_table, _ = Federation(catalog, clients, site=GOVERNED).run(sql, "credit_scoring")
    assert placed.site == "us_lake"
    assert sorted(placed_table.to_pylist(), key=repr) == sorted(governed_table.to_pylist(), key=repr)
    assert placed_table.num_rows == prod_deployment.report.rows["eu_core"]["loans"]
    entries = [e for e in ledger.entries(after=before) if e["seq"] <= before + 64]
    residual = [e for e in entries if e["operation"] == "residual"]
    assert len(residual) == 1 and residual[0]["silo"] == "us_lake" and residual[0]["rows"] == placed_table.num_rows
    sent = {e["silo"]: e for e in entries if e["operation"] == "query" and e["destination"] == "US"}
    assert set(sent) == {"eu_core", "sg_lake"}
    assert sum(r.bytes for r in placed.runs if not r.at_site) == pytest.approx(sum(e["bytes"] for e in sent.values()), rel=0.05)


def test_a_dead_peer_is_a_clear_error_for_a_placed_residual(prod_deployment):
    """A residual whose fragment is to come from an agent that is not there fails at once, naming
    the peer, and leaves no result."""
    from tests.services import free_port

    dead = f"grpc+tls://127.0.0.1:{free_port()}"
    request = RunResidual("dead-peer", "credit_scoring", "SELECT * FROM __f0 JOIN __f1 USING (x)",
                          local=(LocalFragment("__f0", "SELECT customer_id AS x FROM customers"),),
                          imports=(Import("__f1", "sg_lake", dead, "0" * 64),))
    with pytest.raises(FedlakeError, match=re.escape(f"peer agent at {dead}: ") + ".*[Uu]navailable"):
        client(prod_deployment).residual(request).read_all()


def test_amounts_that_may_leave_only_aggregated_leave_with_differential_privacy_over_flight(prod_deployment):
    """For analytics, US amounts reach the EU only as differentially private aggregates: per channel,
    over Flight+TLS, the agent bounds each account's rows, clamps the amounts and releases noisy sums
    and counts; grouping them by another silo's rows would need the rows themselves, and is refused
    naming the column and the rule."""
    from fedlake.query import Federation
    from fedlake.silos import open_silo

    catalog = prod_deployment.catalog
    clients = {s: client(prod_deployment, s) for s in catalog.silos}
    sql = "SELECT channel, sum(amount) AS us_amount, count(*) AS n FROM us_lake.transactions GROUP BY channel"
    table, _ = Federation(catalog, clients).run(sql, "analytics")
    with open_silo(catalog.silo("us_lake"), "prod", prod_deployment.home) as connector:
        exact = connector.execute("SELECT channel, count(*) AS n FROM transactions GROUP BY channel").read_all()
    counts = {r["channel"]: r["n"] for r in exact.to_pylist()}
    released = {r["channel"]: r for r in table.to_pylist()}
    assert released and set(released) <= set(counts)
    # each account keeps at most 5 rows, and the counts carry Laplace noise of scale 15: far under the raw counts
    assert all(r["n"] <= counts[channel] + 150 for channel, r in released.items())
    across = ("SELECT e.channel, sum(u.amount) AS us_amount FROM (SELECT DISTINCT channel FROM eu_core.transactions) e "
              "JOIN us_lake.transactions u ON u.channel = e.channel GROUP BY e.channel")
    with pytest.raises(EgressDenied, match="us_lake.transactions.amount may leave only through differentially private"):
        Federation(catalog, clients).run(across, "analytics")


def test_an_agent_stops_on_sigterm_even_with_a_stream_open(prod_deployment, tls, tmp_path):
    """SIGTERM stops an agent promptly: a client that opened a stream and walked away does not keep
    the process alive (the shutdown waits for requests under way at most a grace period)."""
    import signal
    import time

    from tests.services import agent_process

    env = {**prod_deployment.env, "FEDLAKE_HOME": str(prod_deployment.home)}
    with agent_process("sg_lake", env, tls, tmp_path / "a.log") as (location, process):
        c = FlightAgentClient("sg_lake", location, TOKENS["coordinator"], tls["ca"], timeout=30)
        abandoned = c.query("SELECT * FROM transactions", "credit_scoring")
        next(iter(abandoned))
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        assert time.monotonic() - started < 15
