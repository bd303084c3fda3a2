"""The coordinator <-> agent protocol: every message round-trips its wire form, and a malformed,
foreign or old message is refused in one line naming what is wrong."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from fedlake.agent.protocol import (
    ColumnVerdict, Decision, ExplainFragment, Import, KeysFor, LocalFragment, PlanFragment, PlannedFragment,
    PrepareTransfer, ProtocolError, Redeem, RedeemTransfer, ResidualReport, ResidualSemiJoin, RunResidual, FragmentReport,
    kind_of,
)

SCHEMA = pa.schema([("customer_id", pa.string()), ("income", pa.float64())])
VERDICTS = (ColumnVerdict("customer_id", "pseudonymize", ("us.customers.customer_id",), ("policies.yaml: pii.direct[0]",)),
            ColumnVerdict("income", "allow", ("us.customers.income",), ()))

MESSAGES = [
    PlanFragment("SELECT 1 AS x FROM t", "analytics"),
    PlanFragment("SELECT 1 AS x FROM t", "analytics", region="EU", estimate=False),
    PlannedFragment("ab" * 32, "us_lake", Decision(VERDICTS, "", "WITH __fl_m_t AS (...) SELECT ...", {"t.x": "allow"}, False),
                    SCHEMA, 1200, 38400),
    PlannedFragment("cd" * 32, "eu_core", Decision(), SCHEMA),
    ExplainFragment("SELECT 1 AS x FROM t", "analytics", "SG"),
    KeysFor("ab" * 32, "customer_id", "c.customer_id = a.customer_id"),
    Redeem("ab" * 32),
    PrepareTransfer("SELECT customer_id FROM customers", "credit_scoring", "us_lake"),
    RedeemTransfer("ef" * 32),
    RunResidual("r1", "analytics", "SELECT * FROM __f0 JOIN __f1 USING (k)",
                local=(LocalFragment("__f0", "SELECT k FROM t"),),
                imports=(Import("__f1", "sg_lake", "grpc+tls://127.0.0.1:1", "01" * 32),),
                semijoins=(ResidualSemiJoin("__f0.k = __f1.k", "__f1", "k", (("__f0", "k"),), 4096.0),)),
    ResidualReport("coordinator", {"__f0": FragmentReport(10, 80, 0.5)}, {"__f1": {"__f0.k = __f1.k": (10, 80)}},
                   {"__f1": ["a note"]}),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_its_wire_form(message):
    wire = message.to_wire()
    assert kind_of(wire) == message.kind
    back = type(message).from_wire(wire)
    assert back == message


@pytest.mark.parametrize(
    "raw, problem",
    [
        (b"not json", "a protocol message is JSON"),
        (b"[1, 2]", "a protocol message is a JSON object"),
        (json.dumps({"v": 1, "kind": "plan", "sql": "x", "purpose": "p"}), "protocol version 1 is not spoken here"),
        (json.dumps({"v": 2, "kind": "redeem", "ticket": "t"}), "expected a plan message, got 'redeem'"),
        (json.dumps({"v": 2, "kind": "plan", "purpose": "p"}), "a plan message needs 'sql'"),
        (json.dumps({"v": 2, "kind": "plan", "sql": 1, "purpose": "p"}), "'sql' is str, not int"),
        (json.dumps({"v": 2, "kind": "plan", "sql": "x", "purpose": "p", "estimate": "yes"}), "'estimate' is bool, not str"),
    ],
)
def test_a_malformed_message_is_one_line_naming_the_problem(raw, problem):
    with pytest.raises(ProtocolError) as refused:
        PlanFragment.from_wire(raw)
    assert problem in str(refused.value) and "\n" not in str(refused.value)


def test_a_residual_without_its_fields_is_refused_not_a_key_error():
    with pytest.raises(ProtocolError, match="a residual message is malformed"):
        RunResidual.from_fields({"id": "r", "purpose": "p", "sql": "SELECT 1", "imports": [{"name": "x"}]})
    with pytest.raises(ProtocolError, match="a planned message needs 'schema'"):
        PlannedFragment.from_fields({"ticket": "t", "silo": "s", "decision": {}})


def test_a_decision_gives_no_actions_when_refused():
    assert Decision(VERDICTS).actions() == {"customer_id": "pseudonymize", "income": "allow"}
    assert Decision(VERDICTS, denied="egress denied").actions() == {}


SETUP = {"session": "s", "round": 1, "participants": ["eu_core", "us_lake"], "threshold": 2, "frac_bits": 16,
         "vector_size": 8, "purpose": "aml"}


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"round": True}, "'round' is int, not bool"),
        ({"threshold": "2"}, "'threshold' is int, not str"),
        ({"participants": "eu_core"}, "'participants' is list[str], not str"),
        ({"participants": ["eu_core", 7]}, "'participants' must list names"),
    ],
)
def test_typed_fields_of_every_message_kind_are_checked_alike(change, problem):
    from fedlake.learning.secagg.messages import SealedShares, Setup

    assert Setup.from_fields(SETUP).body() == SETUP
    with pytest.raises(ProtocolError) as refused:
        Setup.from_fields({**SETUP, **change})
    assert problem in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(ProtocolError, match="'sealed' must map names to text"):
        SealedShares.from_fields({"silo": "eu_core", "sealed": {"us_lake": 1}, "checked": True})
