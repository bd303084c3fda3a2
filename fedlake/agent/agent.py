"""The silo agent: the one way into a silo. Runs next to it, through the egress gate and the ledger.

The same class serves in-process (the local deployment, fast tests) and behind the Arrow Flight
server (prod): both authenticate a bearer token to an identity, whose region decides where results
go and whose roles decide what it may ask; the request's purpose must be one the identity holds.
Every request is bound to masked relations by the gate before it runs, every error that could quote
a value is contained, and every request, allowed, refused or failed, is ledgered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from sqlglot import exp

from fedlake.agent.failures import AgentFailure, contain
from fedlake.agent.fragments import Fragments
from fedlake.agent.gate import EgressDenied, EgressGate, EgressPlan
from fedlake.agent.peers import CAPABILITY_SCHEME
from fedlake.agent.placed import run_placed_residual
from fedlake.agent.protocol import PlanFragment, PrepareTransfer, ProtocolError, ResidualReport, RunResidual
from fedlake.agent.silo_actions import register_silo_actions
from fedlake.agent.subset import Refused, parse_subset
from fedlake.agent.tickets import TicketRefused
from fedlake.arrow_types import sql_type
from fedlake.audit import BudgetExceeded, Ledger
from fedlake.catalog import SiloSpec
from fedlake.errors import FedlakeError, SiloError
from fedlake.policy.model import Policy
from fedlake.silos.base import Connector, EgressCounter


class Unauthenticated(FedlakeError):
    """No token, or a token no client holds."""


class Forbidden(FedlakeError):
    """A known client asked for something it may not (a purpose, a role or a destination it lacks)."""


# Refusals are decided from the request, the policy and the identity: their messages may leave. So may
# fedlake's own deliberate errors about the request (a malformed semi-join, an unknown action), but
# not a SiloError, which carries what the silo's engine said.
REFUSALS = (EgressDenied, Forbidden, Unauthenticated, Refused, TicketRefused, ProtocolError, BudgetExceeded, AgentFailure)


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
        self.fragments = Fragments(self)  # planned fragments and transfers, by ticket
        self.peer_ca = peer_ca  # the CA that signs peer agents' certificates
        self.residual_reports: dict[str, ResidualReport] = {}  # what each residual placed here received
        self._actions: dict[str, ActionHandler] = {}
        register_silo_actions(self)
        for name, handler in {
            "prepare_transfer": lambda caller, body: {"ticket": self.fragments.prepare_transfer(caller, PrepareTransfer.from_fields(body))},
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
            plan = self.fragments.holder(ticket or "").plan
        except TicketRefused as exc:
            raise Unauthenticated(str(exc)) from None
        return Caller(plan.requester, (plan.purpose,), plan.destination, (), transfer=ticket)

    def authenticate_header(self, value: str | None) -> Caller:
        """`Bearer <token>` for clients, `Capability <ticket>` for peer agents."""
        if value and value.startswith(CAPABILITY_SCHEME):
            return self.authenticate_transfer(value[len(CAPABILITY_SCHEME):])
        return self.authenticate(value[len("Bearer "):] if value and value.startswith("Bearer ") else None)

    def caller_of(self, plan: EgressPlan) -> Caller:
        """The identity a plan was made for, as the ledger names it."""
        return Caller(plan.requester, (plan.purpose,), plan.destination)

    def forbidden(self, what: str) -> Forbidden:
        return Forbidden(f"agent {self.spec.name}: {what}")

    def check_role(self, caller: Caller, role: str, what: str) -> None:
        if role not in caller.roles:
            raise Forbidden(
                f"agent {self.spec.name}: client '{caller.identity}' may not {what}: it lacks the role '{role}' "
                f"({self.policy.path}: clients.{caller.identity}.roles)"
            )

    def check_purpose(self, caller: Caller, purpose: str) -> None:
        """A purpose the identity does not hold is refused, and the refusal ledgered: asking for
        data under a purpose one was not granted is what an auditor looks for."""
        if purpose not in caller.purposes:
            refusal = Forbidden(
                f"agent {self.spec.name}: client '{caller.identity}' may not declare purpose '{purpose}' "
                f"(may declare: {', '.join(caller.purposes) or 'none'}; {self.policy.path}: clients.{caller.identity})"
            )
            self.ledger.record(requester=caller.identity, purpose=purpose, silo=self.spec.name, destination=caller.region,
                               operation="declare_purpose", fragment="", columns=[{"refused": str(refusal)}],
                               decision="denied", error="FORBIDDEN_PURPOSE")
            raise refusal

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
        if caller.transfer:
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

    def contained(self, caller: Caller, exc: BaseException, operation: str, purpose: str, fragment: str) -> BaseException:
        """`exc` itself if its message may leave, else its contained failure (ledgered)."""
        return exc if may_leave(exc) else self.failed(caller, exc, operation, purpose, fragment)

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

    def prepare(self, caller: Caller, request: PlanFragment):
        """Plan a fragment once; its ticket redeems it (see fedlake.agent.fragments)."""
        return self.fragments.prepare(caller, request)

    def stream(self, caller: Caller, sql: str, purpose: str, destination: str | None = None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Plan and run at once: for callers in this process that need no estimate or keys."""
        planned = self.fragments.prepare(caller, PlanFragment(sql, purpose, destination or "", estimate=False))
        return self.fragments.redeem(caller, planned.ticket)

    # -- residuals placed in a silo, and the transfers that feed them ---------------------------

    def residual(self, caller: Caller, request: RunResidual) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Run a residual the coordinator placed in this silo; only its result leaves, to the coordinator."""
        self.check_role(caller, "coordinate", "run residuals")
        return run_placed_residual(self, caller, request)

    def _residual_report(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """What a residual placed here received (rows, bytes per fragment) and the filters it sent."""
        report = self.residual_reports.get(str(body["id"]))
        if report is None or report.requester != caller.identity:
            raise FedlakeError(f"agent {self.spec.name}: no residual '{body['id']}' of yours ran here")
        return report._fields()

    def _ledger_head(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """This silo's chain head, for the coordinator (or Dagster) to witness elsewhere."""
        seq, head = self.ledger.head(self.spec.name)
        return {"chain": self.spec.name, "seq": seq, "hash": head}


def json_text(body: dict[str, Any]) -> str:
    """A request body as ledgered text (only its hash is stored)."""
    return json.dumps(body, sort_keys=True, default=str)
