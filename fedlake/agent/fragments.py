"""Fragments through the gate: planned once, redeemed by ticket, run inside the silo, ledgered.

`prepare` decides a fragment (masks bound, gate run), estimates it if asked and stores the plan
under a ticket. Keys may then be attached to the ticket (semi-joins), and `redeem` runs the stored
plan: the masked statement, filtered by the keys inside the engine, or for aggregate-only data the
bounded aggregation and its differentially private release. What leaves is counted and ledgered.

Transfers, for a residual placed in another silo, are fragments planned for that silo's region and
stored under a ticket that is also the peer agent's capability.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa

from fedlake.agent.failures import AgentFailure, contain, guarded
from fedlake.agent.gate import EgressDenied, EgressPlan
from fedlake.agent.protocol import Decision, KeysFor, PlanFragment, PlannedFragment, PrepareTransfer
from fedlake.agent.tickets import Planned, PlannedFragments
from fedlake.arrow_types import arrow_width
from fedlake.audit import Budget
from fedlake.errors import FedlakeError
from fedlake.keyset import KeySet, filter_batches, filtered_sql, key_family
from fedlake.policy.dp import release
from fedlake.silos.base import counted

if TYPE_CHECKING:
    from fedlake.agent.agent import Caller, SiloAgent

TRANSFER = "transfer"  # the identity a transfer's ticket is stored under: its holder is a peer agent


def decision_of(plan: EgressPlan) -> Decision:
    return Decision(plan.columns, "", plan.sql, plan.mask_actions(), plan.dp is not None)


class Fragments:
    def __init__(self, agent: SiloAgent):
        self.agent = agent
        self.planned = PlannedFragments(agent.spec.name)
        self.transfers = PlannedFragments(agent.spec.name)

    # -- planning -------------------------------------------------------------------------------

    def prepare(self, caller: Caller, request: PlanFragment) -> PlannedFragment:
        """Plan once: the decisions, the schema it sends, the estimate if asked, and its ticket."""
        agent = self.agent
        plan = agent.plan(caller, request.sql, request.purpose, request.region or None)
        try:
            schema = self.planned_schema(plan)
            rows, nbytes = self.estimate(plan, schema) if request.estimate else (None, None)
        except Exception as exc:  # noqa: BLE001 - contained unless it may leave
            raise agent.contained(caller, exc, "estimate", request.purpose, request.sql) from None
        ticket = self.planned.add(Planned(caller.identity, plan, schema))
        return PlannedFragment(ticket, agent.spec.name, decision_of(plan), schema, rows, nbytes)

    def planned_schema(self, plan: EgressPlan) -> pa.Schema:
        """The schema the plan will send, without running it over any row."""
        empty = self.agent.connector.execute(f"SELECT * FROM ({plan.sql}) AS q LIMIT 0", params=plan.params).schema
        return plan.dp.output_schema(empty) if plan.dp else empty

    def estimate(self, plan: EgressPlan, schema: pa.Schema) -> tuple[int, int]:
        """Rows and bytes the plan would send, from the silo engine's own planner over the masked
        statement (so the estimate, too, sees only masked values)."""
        connector = self.agent.connector
        sql, params = plan.estimate_statement()
        rows = connector.estimate_rows(sql, params=params)
        if rows is None:
            rows = max((connector.row_count(t) for t in plan.masks), default=1)
        return rows, rows * sum(arrow_width(f.type) for f in schema)

    def prepare_transfer(self, caller: Caller, request: PrepareTransfer) -> str:
        """A fragment bound for the agent of silo `receiver`, where a residual whose result comes back
        to the coordinator's region will read it. Only a coordinator may ask, and only where the
        masks for the receiver's region are those for the coordinator's own, so that the residual's
        result holds nothing the coordinator could not have received itself."""
        agent = self.agent
        agent.check_role(caller, "coordinate", "prepare transfers to other agents")
        agent.check_purpose(caller, request.purpose)
        catalog = agent.policy.catalog
        if request.receiver not in catalog.silos or request.receiver == agent.spec.name:
            raise agent.forbidden(f"'{request.receiver}' is not another silo of the catalog")
        region = catalog.silo(request.receiver).region
        there = agent.plan_for(caller, request.sql, request.purpose, region)
        here = agent.plan_for(caller, request.sql, request.purpose, caller.region) if region != caller.region else there
        if there.mask_actions() != here.mask_actions() or (there.dp is None) != (here.dp is None) or there.dp:
            differ = sorted(k for k, v in there.mask_actions().items() if here.mask_actions().get(k) != v)
            agent.ledger.record(
                requester=caller.identity, purpose=request.purpose, silo=agent.spec.name, destination=region,
                operation="transfer", fragment=request.sql, columns=[c.as_dict() for c in there.columns], decision="denied",
            )
            raise EgressDenied(there, f"egress from {agent.spec.name} to {request.receiver} ({region}) denied: the policy "
                               f"masks {', '.join(differ) or 'its aggregate-only columns'} there otherwise than in "
                               f"{caller.region} [rule {agent.policy.path}]")
        note = f"-- sent to the agent of silo {request.receiver}, for a residual placed there"
        return self.transfers.add(Planned(TRANSFER, there, self.planned_schema(there), note=note))

    def holder(self, ticket: str) -> Planned:
        """The transfer a capability names (it stays open until redeemed)."""
        return self.transfers.peek(ticket, TRANSFER)

    # -- running --------------------------------------------------------------------------------

    def _store(self, caller: Caller, ticket: str) -> tuple[PlannedFragments, str]:
        if caller.transfer:
            if caller.transfer != ticket:
                raise self.agent.forbidden("a transfer capability redeems only the fragment it was made for")
            return self.transfers, TRANSFER
        return self.planned, caller.identity

    def attach(self, caller: Caller, message: KeysFor, keys: KeySet) -> None:
        store, identity = self._store(caller, message.ticket)
        planned = store.peek(message.ticket, identity)
        field = planned.schema.field(message.column) if message.column in planned.schema.names else None
        if field is not None and key_family(field.type) != keys.family:
            raise FedlakeError(f"agent {self.agent.spec.name}: semi-join keys are {keys.family}, column "
                               f"'{message.column}' is {field.type}")
        store.attach(message.ticket, identity, message.column, keys, message.condition)

    def redeem(self, caller: Caller, ticket: str) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        store, identity = self._store(caller, ticket)
        planned = store.take(ticket, identity)
        requester = caller if not caller.transfer else self.agent.caller_of(planned.plan)
        return self.run(requester, planned)

    def run(self, caller: Caller, planned: Planned) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Run inside the silo through the masks (and keys), count and ledger what leaves."""
        agent, plan = self.agent, planned.plan
        fragment = [plan.fragment, *([planned.note] if planned.note else [])]
        fragment += [f"-- semi-join on {condition or column}: only rows whose {column} may be one of {keys.keys} keys "
                     f"(a Bloom filter of {keys.nbytes} bytes)" for column, (keys, condition) in planned.keys.items()]
        try:
            schema, batches = self.gated(caller, plan, planned.keys)
        except Exception as exc:  # noqa: BLE001 - contained unless it may leave
            raise agent.contained(caller, exc, "query", plan.purpose, plan.fragment) from None
        decision = "rewritten" if any(c.action != "allow" for c in plan.columns) else "allowed"
        outcome: dict[str, str] = {}

        def fail(exc: BaseException) -> AgentFailure:
            failure = contain(agent.spec.name, exc, "query")
            outcome.update(decision="failed", error=f"{failure.code}:{failure.error_id}")
            return failure

        def record(rows: int, nbytes: int) -> None:
            agent.ledger.record(
                requester=plan.requester, purpose=plan.purpose, silo=agent.spec.name, destination=plan.destination,
                operation="query", fragment="\n".join(fragment), columns=[c.as_dict() for c in plan.columns],
                decision=outcome.get("decision", decision), rows=rows, nbytes=nbytes, error=outcome.get("error", ""),
            )

        return schema, counted(guarded(batches, fail), record, each=agent.egress.add)

    def gated(
        self, caller: Caller, plan: EgressPlan, keys: dict[str, tuple[KeySet, str]] | None = None
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """The masked statement (filtered by semi-join keys), or for aggregate-only data the bounded
        aggregation and its differentially private release (its budget charged first)."""
        agent = self.agent
        if plan.dp is None:
            sql, params, after = plan.sql, plan.params, []
            if keys and getattr(agent.connector, "engine", "duckdb") == "duckdb":
                sql, bound = filtered_sql(sql, [(c, k, f"__fl_s{i}") for i, (c, (k, _)) in enumerate(keys.items())])
                params = {**params, **bound}
            elif keys:
                after = [(c, k) for c, (k, _) in keys.items()]
            reader = agent.connector.execute(sql, params=params)
            return reader.schema, filter_batches(iter(reader), after) if after else iter(reader)
        settings = plan.dp.settings
        since = settings.period_start(dt.datetime.now(dt.timezone.utc)).isoformat()
        agent.ledger.record(
            requester=caller.identity, purpose=plan.purpose, silo=agent.spec.name, destination=plan.destination,
            operation="dp_charge", fragment=plan.fragment, columns=[c.as_dict() for c in plan.columns], decision="dp",
            epsilon=settings.epsilon, delta=settings.delta,
            budget=Budget(settings.budget_epsilon, settings.budget_delta, since),
        )
        groups = agent.connector.execute(plan.sql, params=plan.params).read_all()
        released, _ = release(groups, plan.dp.keys, plan.dp.aggregates, settings.max_rows, settings.epsilon, settings.delta)
        released = released.cast(plan.dp.output_schema(groups.schema))
        return released.schema, iter(released.to_batches())
