"""The agent over Arrow Flight: TLS from certificate files, bearer tokens, the same gate in front.

GetFlightInfo plans a fragment (estimated rows and bytes; a refusal is an error naming the rule),
DoGet streams it, DoAction runs a registered action. Every call authenticates first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from fedlake.agent.agent import Caller, Forbidden, SiloAgent, Unauthenticated, may_leave
from fedlake.agent.failures import contain
from fedlake.agent.gate import EgressDenied
from fedlake.errors import FedlakeError


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

    @staticmethod
    def _request(raw: bytes) -> dict[str, Any]:
        request = json.loads(raw)
        for key in ("sql", "purpose", "destination"):
            if not isinstance(request.get(key), str):
                raise flight.FlightServerError(f"a query request needs '{key}'")
        if not isinstance(request.get("keep") or [], list):
            raise flight.FlightServerError("a query request's 'keep' lists semi-joins: [{column, keys}]")
        return request

    def get_flight_info(self, context, descriptor):
        request = self._request(descriptor.command)
        try:
            _, schema, rows, nbytes = self.agent.estimated(self._caller(context), request["sql"], request["purpose"], request["destination"])
        except Exception as exc:  # noqa: BLE001 - an engine's or a bug's text may quote a value: contained
            raise _as_flight_error(exc if may_leave(exc) else contain(self.agent.spec.name, exc, "request")) from None
        endpoint = flight.FlightEndpoint(flight.Ticket(descriptor.command), [])
        return flight.FlightInfo(schema, descriptor, [endpoint], rows, nbytes)

    def do_get(self, context, ticket):
        """A fragment; a transfer, for a peer agent holding its capability; or a residual placed here."""
        caller = self._caller(context)
        try:
            raw = json.loads(ticket.ticket)
        except ValueError:
            raise flight.FlightServerError("a ticket is JSON") from None
        try:
            if isinstance(raw, dict) and "transfer" in raw:
                if raw["transfer"] != caller.transfer:
                    raise Forbidden(f"agent {self.agent.spec.name}: the ticket is not the capability presented")
                schema, batches = self.agent.redeem(caller)
            elif isinstance(raw, dict) and "residual" in raw:
                schema, batches = self.agent.residual(caller, raw["residual"])
            else:
                request = self._request(ticket.ticket)
                schema, batches = self.agent.stream(
                    caller, request["sql"], request["purpose"], request["destination"], request.get("keep")
                )
        except Exception as exc:  # noqa: BLE001 - an engine's or a bug's text may quote a value: contained
            raise _as_flight_error(exc if may_leave(exc) else contain(self.agent.spec.name, exc, "request")) from None
        return flight.GeneratorStream(schema, batches)

    def do_action(self, context, action):
        body = json.loads(action.body.to_pybytes() or b"{}")
        try:
            result = self.agent.action(self._caller(context), action.type, body)
        except Exception as exc:  # noqa: BLE001 - an engine's or a bug's text may quote a value: contained
            raise _as_flight_error(exc if may_leave(exc) else contain(self.agent.spec.name, exc, "request")) from None
        return [flight.Result(pa.py_buffer(json.dumps(result, default=str).encode()))]

    def list_actions(self, context):
        return [(name, f"agent action {name}") for name in self.agent.action_names()]
