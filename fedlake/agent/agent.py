"""The silo agent: the one way into a silo. Runs next to it, through the egress gate and the ledger.

The same class serves in-process (the local deployment, fast tests) and behind the Arrow Flight
server (prod): both authenticate a bearer token to an identity, whose region decides where results
go and whose roles decide what it may ask; the request's purpose must be one the identity holds.
Every request is bound to masked relations by the gate before it runs, every error that could quote
a value is contained, and every request, allowed, refused or failed, is ledgered.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from sqlglot import exp

from fedlake.agent.mailbox import Mailbox
from fedlake.agent.failures import AgentFailure, contain, guarded
from fedlake.agent.gate import EgressDenied, EgressGate, EgressPlan
from fedlake.agent.peers import CAPABILITY_SCHEME, Transfer, TransferRefused, Transfers
from fedlake.agent.placed import run_placed_residual
from fedlake.agent.silo_actions import register_silo_actions
from fedlake.agent.subset import Refused, parse_subset
from fedlake.arrow_types import arrow_width, sql_type
from fedlake.audit import Budget, BudgetExceeded, Ledger
from fedlake.bloom import BloomFilter
from fedlake.catalog import SiloSpec
from fedlake.errors import FedlakeError, SiloError
from fedlake.policy.dp import release
from fedlake.policy.model import Policy
from fedlake.silos.base import Connector, EgressCounter, counted


class Unauthenticated(FedlakeError):
    """No token, or a token no client holds."""


class Forbidden(FedlakeError):
    """A known client asked for something it may not (a purpose, a role or a destination it lacks)."""


# Refusals are decided from the request, the policy and the identity: their messages may leave. So may
# fedlake's own deliberate errors about the request (a malformed semi-join, an unknown action), but
# not a SiloError, which carries what the silo's engine said.
REFUSALS = (EgressDenied, Forbidden, Unauthenticated, Refused, TransferRefused, BudgetExceeded, AgentFailure)


def may_leave(exc: BaseException) -> bool:
    return isinstance(exc, REFUSALS) or (isinstance(exc, FedlakeError) and not isinstance(exc, SiloError))


@dataclass(frozen=True)
class Caller:
    """An authenticated identity: everything here comes from the token, nothing from the request."""

    identity: str
    purposes: tuple[str, ...]
    region: str = ""  # where the caller's results go
    roles: tuple[str, ...] = ()
    transfer: str | None = None  # a peer agent holding a transfer capability, not a client


ActionHandler = Callable[[Caller, dict[str, Any]], Any]


class SiloAgent:
    def __init__(
        self,
        spec: SiloSpec,
        connector: Connector,
        policy: Policy,
        ledger: Ledger,
        key: bytes,
        tokens: dict[str, str],
        peer_ca: bytes | None = None,
    ):
        self.spec = spec
        self.tokens = tokens  # bearer token -> client identity
        self.connector = connector
        self.policy = policy
        self.ledger = ledger
        self.gate = EgressGate(spec, policy, key)
        self.egress = EgressCounter()  # what left through this agent, after the gate
        self.semijoin_keys = Mailbox()
        self.transfers = Transfers()  # capabilities handed out for fragments bound for a peer agent
        self.peer_ca = peer_ca  # the CA that signs peer agents' certificates
        self.residual_reports: dict[str, dict[str, Any]] = {}  # what each residual placed here received
        self._actions: dict[str, ActionHandler] = {}
        register_silo_actions(self)
        for name, handler in {
            "semijoin_keys": self._semijoin_keys,
            "prepare_transfer": self._prepare_transfer,
            "residual_report": self._residual_report,
            "ledger_head": self._ledger_head,
        }.items():
            self.register_action(name, handler)

    # -- who is calling -------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> Caller:
        if not token:
            raise Unauthenticated(f"agent {self.spec.name}: no bearer token")
        identity = self.tokens.get(token)
        if identity is None:
            raise Unauthenticated(f"agent {self.spec.name}: invalid bearer token")
        client = self.policy.clients[identity]
        return Caller(identity, client.purposes, client.region, client.roles)

    def authenticate_transfer(self, ticket: str | None) -> Caller:
        """A peer agent presenting a transfer capability: it may redeem that transfer, nothing else."""
        try:
            transfer = self.transfers.get(ticket or "", self.spec.name)
        except TransferRefused as exc:
            raise Unauthenticated(str(exc)) from None
        return Caller(transfer.caller.identity, (transfer.purpose,), transfer.destination, (), transfer=ticket)

    def authenticate_header(self, value: str | None) -> Caller:
        """`Bearer <token>` for clients, `Capability <ticket>` for peer agents."""
        if value and value.startswith(CAPABILITY_SCHEME):
            return self.authenticate_transfer(value[len(CAPABILITY_SCHEME):])
        return self.authenticate(value[len("Bearer "):] if value and value.startswith("Bearer ") else None)

    def check_role(self, caller: Caller, role: str, what: str) -> None:
        if role not in caller.roles:
            raise Forbidden(
                f"agent {self.spec.name}: client '{caller.identity}' may not {what}: it lacks the role '{role}' "
                f"({self.policy.path}: clients.{caller.identity}.roles)"
            )

    def check_purpose(self, caller: Caller, purpose: str) -> None:
        if purpose not in caller.purposes:
            raise Forbidden(
                f"agent {self.spec.name}: client '{caller.identity}' may not declare purpose '{purpose}' "
                f"(may declare: {', '.join(caller.purposes) or 'none'}; {self.policy.path}: clients.{caller.identity})"
            )

    def destination(self, caller: Caller, requested: str | None) -> str:
        """Where the caller's results go: its identity's region. A request naming another is refused."""
        if requested not in (None, "", caller.region):
            raise Forbidden(f"agent {self.spec.name}: client '{caller.identity}' receives its results in {caller.region}, "
                            f"not {requested}: the destination comes from the identity "
                            f"({self.policy.path}: clients.{caller.identity}.region)")
        return caller.region

    # -- actions --------------------------------------------------------------------------------

    def register_action(self, name: str, handler: ActionHandler) -> None:
        """Further operations (data-quality validation, training rounds) plug in here."""
        self._actions[name] = handler

    def action_names(self) -> list[str]:
        return sorted(self._actions)

    def action(self, caller: Caller, name: str, body: dict[str, Any]) -> Any:
        if caller.transfer and name != "semijoin_keys":
            raise Forbidden(f"agent {self.spec.name}: a transfer capability does not allow action '{name}'")
        if name not in self._actions:
            raise FedlakeError(f"agent {self.spec.name}: unknown action '{name}' (known: {', '.join(self.action_names())})")
        try:
            return self._actions[name](caller, body)
        except KeyError as exc:
            raise FedlakeError(f"agent {self.spec.name}: action {name} needs {exc}") from None
        except Exception as exc:  # noqa: BLE001 - contained unless it may leave: then only a code and an id do
            if may_leave(exc):
                raise
            raise self.failed(caller, exc, name, str(body.get("purpose", "")), json_text(body)) from None

    def failed(self, caller: Caller, exc: BaseException, operation: str, purpose: str, fragment: str) -> AgentFailure:
        """Contain an error (its text stays in the silo's log) and ledger the failed request."""
        failure = exc if isinstance(exc, AgentFailure) else contain(self.spec.name, exc, operation)
        self.ledger.record(requester=caller.identity, purpose=purpose or "-", silo=self.spec.name, destination=caller.region,
                           operation=operation, fragment=fragment, columns=[], decision="failed",
                           error=f"{failure.code}:{failure.error_id}")
        return failure

    # -- queries through the gate ---------------------------------------------------------------

    def tables_for(self, tree: exp.Query) -> tuple[dict[str, dict[str, str]], dict[str, dict]]:
        """The tables a request names, with their SQL types, and for tables fedlake made here, what
        was recorded when they were made (their purpose and each column's base columns)."""
        ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
        names = {t.name for t in tree.find_all(exp.Table)} - ctes
        present = set(self.connector.list_tables())
        tables: dict[str, dict[str, str]] = {}
        derived: dict[str, dict] = {}
        for name in sorted(names):
            if name not in present:
                raise Refused(f"silo {self.spec.name} has no table '{name}' (tables: {', '.join(sorted(present))})")
            tables[name] = {f.name: sql_type(f.type) for f in self.connector.schema(name)}
            if name not in self.spec.tables:
                derived[name] = self.connector.annotations(name) or {}
        return tables, derived

    def plan(self, caller: Caller, sql: str, purpose: str, destination: str | None = None) -> EgressPlan:
        """Decide a request for the caller's own region; a refusal is ledgered before it is raised."""
        if caller.transfer:
            raise Forbidden(f"agent {self.spec.name}: a transfer capability only redeems the fragment it was made for")
        self.check_role(caller, "query", "query this silo")
        self.check_purpose(caller, purpose)
        return self.plan_for(caller, sql, purpose, self.destination(caller, destination))

    def plan_for(self, caller: Caller, sql: str, purpose: str, region: str, operation: str = "query") -> EgressPlan:
        """Decide a request for `region` (the caller's own, or, for a coordinator's transfer, the
        receiving silo's), ledgering a refusal or a failure."""
        try:
            tree = parse_subset(sql)
            tables, derived = self.tables_for(tree)
            return self.gate.plan(tree, caller.identity, purpose, region, tables, derived)
        except (EgressDenied, Refused) as exc:
            self.ledger.record(
                requester=caller.identity, purpose=purpose, silo=self.spec.name, destination=region,
                operation=operation, fragment=sql, columns=[{"refused": str(exc)}], decision="denied", error="REFUSED",
            )
            if isinstance(exc, EgressDenied):
                raise
            raise EgressDenied(None, f"egress from {self.spec.name} to {region} for {purpose} denied: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - contained unless it may leave
            if may_leave(exc):
                raise
            raise self.failed(caller, exc, operation, purpose, sql) from None

    def _execute(self, plan: EgressPlan, sql: str | None = None) -> pa.RecordBatchReader:
        return self.connector.execute(sql or plan.sql, params=plan.params)

    def planned_schema(self, plan: EgressPlan) -> pa.Schema:
        """The schema the plan will send, without running it over any row."""
        empty = self._execute(plan, f"SELECT * FROM ({plan.sql}) AS q LIMIT 0").schema
        return plan.dp.output_schema(empty) if plan.dp else empty

    def estimate(self, plan: EgressPlan, schema: pa.Schema | None = None) -> tuple[int, int]:
        """Rows and bytes the plan would send, from the silo engine's own planner over the masked
        statement (so the estimate, too, sees only masked values)."""
        sql, params = plan.estimate_statement()
        rows = self.connector.estimate_rows(sql, params=params)
        if rows is None:
            rows = max((self.connector.row_count(t) for t in plan.masks), default=1)
        schema = schema if schema is not None else self.planned_schema(plan)
        return rows, rows * sum(arrow_width(f.type) for f in schema)

    def estimated(self, caller: Caller, sql: str, purpose: str, destination: str | None = None) -> tuple[EgressPlan, pa.Schema, int, int]:
        """Plan a request and estimate what it would send, without running it over any row."""
        plan = self.plan(caller, sql, purpose, destination)
        try:
            schema = self.planned_schema(plan)
            rows, nbytes = self.estimate(plan, schema)
        except Exception as exc:  # noqa: BLE001 - contained unless it may leave
            if may_leave(exc):
                raise
            raise self.failed(caller, exc, "estimate", purpose, sql) from None
        return plan, schema, rows, nbytes

    def gated(self, caller: Caller, plan: EgressPlan) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Run a planned request inside the silo: the masked statement, or for aggregate-only data the
        bounded aggregation and its differentially private release (its budget charged first)."""
        if plan.dp is None:
            reader = self._execute(plan)
            return reader.schema, iter(reader)
        settings = plan.dp.settings
        since = settings.period_start(dt.datetime.now(dt.timezone.utc)).isoformat()
        self.ledger.record(
            requester=caller.identity, purpose=plan.purpose, silo=self.spec.name, destination=plan.destination,
            operation="dp_charge", fragment=plan.fragment, columns=[c.as_dict() for c in plan.columns], decision="dp",
            epsilon=settings.epsilon, delta=settings.delta,
            budget=Budget(settings.budget_epsilon, settings.budget_delta, since),
        )
        groups = self._execute(plan).read_all()
        released, _ = release(groups, plan.dp.keys, plan.dp.aggregates, settings.max_rows, settings.epsilon, settings.delta)
        released = released.cast(plan.dp.output_schema(groups.schema))
        return released.schema, iter(released.to_batches())

    def stream(
        self,
        caller: Caller,
        sql: str,
        purpose: str,
        destination: str | None = None,
        keep: list[dict[str, Any]] | None = None,
        note: str = "",
        plan: EgressPlan | None = None,
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Plan, run inside the silo through the masks, count and ledger what leaves.

        `keep` lists semi-joins, [{"column": an output column, "keys": an id}]: the fragment runs at
        once and its batches wait here until a Bloom filter of join keys arrives under each id (the
        `semijoin_keys` action); then only rows whose (masked) keys may be among them are sent.
        `note` goes into the ledger entry with the fragment."""
        plan = plan or self.plan(caller, sql, purpose, destination)
        self._check_semijoins(plan, keep or [])
        fragment = [sql, *([note] if note else [])]
        try:
            schema, batches = self.gated(caller, plan)
        except Exception as exc:  # noqa: BLE001 - contained unless it may leave
            if may_leave(exc):
                raise
            raise self.failed(caller, exc, "query", purpose, sql) from None
        decision = "rewritten" if any(c.action != "allow" for c in plan.columns) else "allowed"
        if keep:
            batches = self.semijoin_keys.filtered(batches, schema, [(k["column"], str(k.get("keys"))) for k in keep], fragment, self.spec.name)
        outcome: dict[str, str] = {}

        def fail(exc: BaseException) -> AgentFailure:
            failure = contain(self.spec.name, exc, "query")
            outcome.update(decision="failed", error=f"{failure.code}:{failure.error_id}")
            return failure

        def record(rows: int, nbytes: int) -> None:
            self.ledger.record(
                requester=caller.identity, purpose=purpose, silo=self.spec.name, destination=plan.destination,
                operation="query", fragment="\n".join(fragment), columns=[c.as_dict() for c in plan.columns],
                decision=outcome.get("decision", decision), rows=rows, nbytes=nbytes, error=outcome.get("error", ""),
            )

        return schema, counted(guarded(batches, fail), record, each=self.egress.add)

    # -- residuals placed in a silo, and the transfers that feed them ---------------------------

    def _prepare_transfer(self, caller: Caller, body: dict[str, Any]) -> dict[str, str]:
        """A fragment bound for the agent of silo `receiver`, where a residual whose result comes back
        to the coordinator's region will read it. Only a coordinator may ask, and only where the
        masks for the receiver's region are those for the coordinator's own, so that the residual's
        result holds nothing the coordinator could not have received itself."""
        self.check_role(caller, "coordinate", "prepare transfers to other agents")
        sql, purpose, receiver = body["sql"], body["purpose"], str(body["receiver"])
        self.check_purpose(caller, purpose)
        if receiver not in self.policy.catalog.silos or receiver == self.spec.name:
            raise Forbidden(f"agent {self.spec.name}: '{receiver}' is not another silo of the catalog")
        region = self.policy.catalog.silo(receiver).region
        keep = body.get("keep") or []
        there = self.plan_for(caller, sql, purpose, region)
        here = self.plan_for(caller, sql, purpose, caller.region) if region != caller.region else there
        if there.mask_actions() != here.mask_actions() or (there.dp is None) != (here.dp is None) or there.dp:
            differ = sorted(k for k, v in there.mask_actions().items() if here.mask_actions().get(k) != v)
            self.ledger.record(
                requester=caller.identity, purpose=purpose, silo=self.spec.name, destination=region,
                operation="transfer", fragment=sql, columns=[c.as_dict() for c in there.columns], decision="denied",
            )
            raise EgressDenied(there, f"egress from {self.spec.name} to {receiver} ({region}) denied: the policy masks "
                               f"{', '.join(differ) or 'its aggregate-only columns'} there otherwise than in {caller.region} "
                               f"[rule {self.policy.path}]")
        self._check_semijoins(there, keep)
        transfer = Transfer(caller, sql, purpose, region, receiver, keep)
        return {"ticket": self.transfers.add(transfer)}

    def redeem(self, caller: Caller) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """The stream a peer agent's capability was made for, once, planned and ledgered as any fragment."""
        if not caller.transfer:
            raise Forbidden(f"agent {self.spec.name}: only a transfer capability redeems a transfer")
        try:
            transfer = self.transfers.take(caller.transfer, self.spec.name)
        except TransferRefused as exc:
            raise Unauthenticated(str(exc)) from None
        plan = self.plan_for(transfer.caller, transfer.sql, transfer.purpose, transfer.destination)
        return self.stream(
            transfer.caller, transfer.sql, transfer.purpose, transfer.destination, transfer.keep or None,
            note=f"-- sent to the agent of silo {transfer.receiver}, for a residual placed there", plan=plan,
        )

    def residual(self, caller: Caller, request: dict[str, Any]) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Run a residual the coordinator placed in this silo; only its result leaves, to the coordinator."""
        self.check_role(caller, "coordinate", "run residuals")
        return run_placed_residual(self, caller, request)

    def _residual_report(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """What a residual placed here received (rows, bytes per fragment) and the filters it sent."""
        report = self.residual_reports.get(str(body["id"]))
        if report is None or report["requester"] != caller.identity:
            raise FedlakeError(f"agent {self.spec.name}: no residual '{body['id']}' of yours ran here")
        return report

    def _ledger_head(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """This silo's chain head, for the coordinator (or Dagster) to witness elsewhere."""
        seq, head = self.ledger.head(self.spec.name)
        return {"chain": self.spec.name, "seq": seq, "hash": head}

    def _check_semijoins(self, plan: EgressPlan, keep: list[Any]) -> None:
        """Every semi-join a fragment is to wait for names a column the fragment returns."""
        outputs = {c.output for c in plan.columns}
        for semijoin in keep:
            if not isinstance(semijoin, dict) or semijoin.get("column") not in outputs:
                column = semijoin.get("column") if isinstance(semijoin, dict) else semijoin
                raise FedlakeError(f"agent {self.spec.name}: a semi-join names column '{column}', which the fragment does not return")

    def _semijoin_keys(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """The keys a running fragment waits for, or None: send it all. Only a coordinator, or a peer
        agent whose capability covers these keys, may post them."""
        if caller.transfer:
            if str(body["id"]) not in self.transfers.get(caller.transfer, self.spec.name).keys_ids:
                raise Forbidden(f"agent {self.spec.name}: the transfer capability does not cover semi-join keys '{body['id']}'")
        else:
            self.check_role(caller, "coordinate", "send semi-join keys")
        raw = body.get("filter")
        if raw is not None:
            BloomFilter.from_dict(raw)
        self.semijoin_keys.put(str(body["id"]), raw)
        return {"id": body["id"]}


def json_text(body: dict[str, Any]) -> str:
    """A request body as ledgered text (only its hash is stored)."""
    return json.dumps(body, sort_keys=True, default=str)
