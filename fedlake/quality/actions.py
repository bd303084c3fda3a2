"""The agent action `validate`: a silo's agent runs its table's suite in place and answers with results.

The suites live with the agent (next to the silo), so the coordinator names a table, not a suite,
and cannot ask for a looser one. Only a coordinator may ask. Like every answer that may carry values
out of the silo, the result is decided per column by the policy for the caller's declared purpose
and its own region (a request naming another is refused), and written to the audit ledger.
"""

from __future__ import annotations

import json
from typing import Any

from fedlake.agent.agent import Caller, Forbidden, SiloAgent
from fedlake.errors import FedlakeError
from fedlake.quality.suites import QualitySuites
from fedlake.quality.validate import QualityError, validate_in_place

VALIDATE_ACTION = "validate"
BODY_KEYS = ("table", "purpose")


def register_quality_actions(agent: SiloAgent, suites: QualitySuites) -> None:
    """Register `validate` (body: table, purpose) on a silo agent."""

    def validate(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in BODY_KEYS if not isinstance(body.get(k), str) or not body.get(k)]
        if missing:
            raise FedlakeError(f"agent {agent.spec.name}: action '{VALIDATE_ACTION}' needs {', '.join(missing)} (body: {', '.join(BODY_KEYS)})")
        agent.check_role(caller, "coordinate", "validate tables in place")
        table, purpose = body["table"], body["purpose"]
        destination = agent.destination(caller, body.get("destination"))
        if purpose not in caller.purposes:
            raise Forbidden(
                f"agent {agent.spec.name}: client '{caller.identity}' may not declare purpose '{purpose}' "
                f"(may declare: {', '.join(caller.purposes) or 'none'}; {agent.policy.path}: clients.{caller.identity})"
            )
        suite = suites.for_table(agent.spec.name, table)
        if suite is None:
            raise QualityError(
                f"agent {agent.spec.name}: no expectation suite for table '{table}' in {suites.directory} "
                f"(suites here: {', '.join(suites.tables(agent.spec.name)) or 'none'})"
            )
        report = validate_in_place(agent.connector, agent.spec, table, suite, agent.policy, destination, purpose)
        revealed = [e for e in report["expectations"] if e["unexpected_values"]]
        columns = {}
        for e in report["expectations"]:
            for column in e["columns"]:
                entry = columns.setdefault(column, {"output": column, "values": "withheld" if e["values_withheld"] else "allowed"})
                if e["values_withheld"]:
                    entry["values"] = "withheld"
        agent.ledger.record(
            requester=caller.identity,
            purpose=purpose,
            silo=agent.spec.name,
            destination=destination,
            operation=VALIDATE_ACTION,
            fragment=f"expectation suite {suite.name} ({suite.path}) on {agent.spec.name}.{table}",
            columns=list(columns.values()),
            decision="allowed",
            rows=sum(len(e["unexpected_values"]) for e in revealed),
            nbytes=len(json.dumps(report, default=str)),
        )
        return report

    agent.register_action(VALIDATE_ACTION, validate)
