"""The agent over Arrow Flight: TLS from certificate files, bearer tokens, the same gate in front.

The protocol's steps map onto Flight's calls (fedlake.agent.protocol): GetFlightInfo plans a
fragment once (the FlightInfo's app_metadata is the `PlannedFragment`, its ticket redeems it), DoPut
attaches semi-join keys to a planned fragment, DoGet redeems a fragment, a transfer or a residual,
DoAction runs a registered action. Every call authenticates first.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight

from fedlake.agent.agent import Caller, Forbidden, SiloAgent, Unauthenticated, may_leave
from fedlake.agent.failures import contain
from fedlake.agent.gate import EgressDenied
from fedlake.agent.protocol import KeysFor, PlanFragment, ProtocolError, Redeem, RedeemTransfer, RunResidual, kind_of
from fedlake.errors import FedlakeError
from fedlake.keyset import MAX_KEYS_BYTES, KeySet


class _Authenticated(flight.ServerMiddleware):
    def __init__(self, caller: Caller):
        self.caller = caller


class BearerAuth(flight.ServerMiddlewareFactory):
    """Maps `authorization: Bearer <token>` to a caller, or `Capability <ticket>` to a peer agent
    redeeming a transfer; refuses the call otherwise."""

    def __init__(self, agent: SiloAgent):
        super().__init__()
        self.agent = agent

    def start_call(self, info, headers):
        values = headers.get("authorization") or headers.get("Authorization") or []
        value = values[0] if values else None
        value = value.decode() if isinstance(value, bytes) else value
        try:
            return _Authenticated(self.agent.authenticate_header(value))
        except Unauthenticated as exc:
            raise flight.FlightUnauthenticatedError(str(exc)) from None


def _as_flight_error(exc: Exception) -> Exception:
    """Refusals keep their message (it names the rule); anything else reaching here was contained
    by the agent already, so only its code and error id are in its message."""
    if isinstance(exc, (EgressDenied, Forbidden)):
        return flight.FlightUnauthorizedError(str(exc))
    if isinstance(exc, Unauthenticated):
        return flight.FlightUnauthenticatedError(str(exc))
    return flight.FlightServerError(str(exc))


class AgentFlightServer(flight.FlightServerBase):
    def __init__(self, agent: SiloAgent, location: str, tls_cert: Path | None = None, tls_key: Path | None = None):
        certificates = []
        if tls_cert and tls_key:
            certificates = [flight.CertKeyPair(Path(tls_cert).read_bytes(), Path(tls_key).read_bytes())]
        elif location.startswith("grpc+tls"):
            raise FedlakeError("a grpc+tls location needs --tls-cert and --tls-key")
        super().__init__(location, tls_certificates=certificates, middleware={"auth": BearerAuth(agent)})
        self.agent = agent

    def _caller(self, context) -> Caller:
        return context.get_middleware("auth").caller

    def _failed(self, exc: Exception) -> Exception:
        """An engine's or a bug's text may quote a value: contained unless it may leave."""
        return _as_flight_error(exc if may_leave(exc) else contain(self.agent.spec.name, exc, "request"))

    def get_flight_info(self, context, descriptor):
        try:
            planned = self.agent.prepare(self._caller(context), PlanFragment.from_wire(descriptor.command))
        except Exception as exc:  # noqa: BLE001
            raise self._failed(exc) from None
        endpoint = flight.FlightEndpoint(flight.Ticket(Redeem(planned.ticket).to_wire()), [])
        return flight.FlightInfo(planned.schema, descriptor, [endpoint], planned.rows if planned.rows is not None else -1,
                                 planned.bytes if planned.bytes is not None else -1, app_metadata=planned.to_wire())

    def do_put(self, context, descriptor, reader, writer):
        """Semi-join keys for a planned fragment, read up to what an agent accepts for one."""
        try:
            message = KeysFor.from_wire(descriptor.command)
            batches, size = [], 0
            for chunk in reader:
                size += chunk.data.nbytes
                if size > MAX_KEYS_BYTES:
                    raise FedlakeError(f"agent {self.agent.spec.name}: semi-join keys over {MAX_KEYS_BYTES} bytes")
                batches.append(chunk.data)
            keys = KeySet.from_table(pa.Table.from_batches(batches, reader.schema))
            self.agent.fragments.attach(self._caller(context), message, keys)
        except Exception as exc:  # noqa: BLE001
            raise self._failed(exc) from None

    def do_get(self, context, ticket):
        """A planned fragment; a transfer, for a peer agent holding its capability; or a residual placed here."""
        caller = self._caller(context)
        try:
            kind = kind_of(ticket.ticket)
            if kind == Redeem.kind:
                schema, batches = self.agent.fragments.redeem(caller, Redeem.from_wire(ticket.ticket).ticket)
            elif kind == RedeemTransfer.kind:
                schema, batches = self.agent.fragments.redeem(caller, RedeemTransfer.from_wire(ticket.ticket).ticket)
            elif kind == RunResidual.kind:
                schema, batches = self.agent.residual(caller, RunResidual.from_wire(ticket.ticket))
            else:
                raise ProtocolError(f"a ticket redeems a fragment, a transfer or a residual, not {kind!r}")
        except Exception as exc:  # noqa: BLE001
            raise self._failed(exc) from None
        return flight.GeneratorStream(schema, batches)

    def do_action(self, context, action):
        try:
            body = json.loads(action.body.to_pybytes() or b"{}")
        except ValueError:
            raise flight.FlightServerError("an action's body is JSON") from None
        try:
            if not isinstance(body, dict):
                raise ProtocolError("an action's body is a JSON object")
            result = self.agent.action(self._caller(context), action.type, body)
        except Exception as exc:  # noqa: BLE001
            raise self._failed(exc) from None
        return [flight.Result(pa.py_buffer(json.dumps(result, default=str).encode()))]

    def list_actions(self, context):
        return [(name, f"agent action {name}") for name in self.agent.action_names()]
