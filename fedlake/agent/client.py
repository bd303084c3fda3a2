"""Clients of a silo agent: over Flight (prod) or in-process (local), with the same interface.

Both go through the agent's authentication, purpose check, gate and ledger; the in-process client
only skips the network. Both speak the typed protocol (fedlake.agent.protocol): a fragment is
planned once, and its ticket redeems it. Every failure names the silo.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from fedlake.agent.agent import Forbidden, SiloAgent, Unauthenticated
from fedlake.agent.gate import EgressDenied
from fedlake.agent.peers import in_process_location, put_keys
from fedlake.agent.protocol import (
    Decision, ExplainFragment, KeysFor, PlanFragment, PlannedFragment, PrepareTransfer, Redeem, ResidualReport, RunResidual,
    TableInfo,
)
from fedlake.errors import FedlakeError
from fedlake.keyset import KeySet

DEFAULT_TIMEOUT = 300.0


class AgentUnavailable(FedlakeError):
    """The agent did not answer: down, unreachable, or past the deadline."""


class AgentClient(ABC):
    silo: str
    location: str  # where the other agents reach this one, for transfers

    @abstractmethod
    def prepare(self, request: PlanFragment) -> PlannedFragment:
        """Plan a fragment once: its decisions, schema, estimate if asked, and the ticket that redeems it."""

    @abstractmethod
    def attach_keys(self, ticket: str, column: str, keys: KeySet, condition: str = "") -> None:
        """Semi-join keys a planned fragment's rows must match on `column`."""

    @abstractmethod
    def fetch(self, ticket: str) -> pa.RecordBatchReader:
        """Run a planned fragment (once) and stream what the gate lets out."""

    def cancel(self, ticket: str) -> None:
        """Stop a fetch under way (another part of its query failed, or its deadline passed)."""

    @abstractmethod
    def action(self, name: str, **body: Any) -> Any: ...

    @abstractmethod
    def residual(self, request: RunResidual) -> pa.RecordBatchReader:
        """Run a residual placed in this silo (see fedlake.agent.placed) and stream its result."""

    def query(self, sql: str, purpose: str, destination: str | None = None) -> pa.RecordBatchReader:
        """Plan and run a fragment at once (no estimate, no keys)."""
        return self.fetch(self.prepare(PlanFragment(sql, purpose, destination or "", estimate=False)).ticket)

    def estimate(self, sql: str, purpose: str, destination: str | None = None) -> PlannedFragment:
        return self.prepare(PlanFragment(sql, purpose, destination or ""))

    def explain(self, sql: str, purpose: str, region: str = "") -> Decision:
        """The gate's decision for a fragment and a region (the caller's own by default)."""
        return Decision.from_fields(self.action("explain", **ExplainFragment(sql, purpose, region)._fields()))

    def prepare_transfer(self, sql: str, purpose: str, receiver: str) -> str:
        """A one-time capability for a fragment bound for silo `receiver`'s agent."""
        return self.action("prepare_transfer", **PrepareTransfer(sql, purpose, receiver)._fields())["ticket"]

    def residual_report(self, rid: str) -> ResidualReport:
        return ResidualReport.from_fields(self.action("residual_report", id=rid))

    def tables(self, names: list[str], purpose: str | None = None) -> dict[str, TableInfo]:
        """For those of `names` the silo holds: column types and, for a purpose, the statistics the
        caller's masks let out, in one call."""
        found = self.action("tables", names=sorted(names), **({"purpose": purpose} if purpose else {}))
        return {name: TableInfo.from_fields(info) for name, info in found.items()}

    def list_tables(self) -> list[str]:
        return self.action("list_tables")

    def schema(self, table: str) -> list[tuple[str, str]]:
        """(name, Arrow type) per column."""
        return [(c[0], c[1]) for c in self.action("schema", table=table)]

    def sql_schema(self, table: str) -> dict[str, str]:
        """{name: SQL type} per column, as the agent maps its Arrow types."""
        return {c[0]: c[2] for c in self.action("schema", table=table)}

    def row_count(self, table: str) -> int:
        return self.action("row_count", table=table)

    def statistics(self, table: str, purpose: str, destination: str) -> dict[str, Any]:
        return self.action("statistics", table=table, purpose=purpose, destination=destination)

    def materialize(self, table: str, sql: str, purpose: str) -> dict[str, Any]:
        """Make `table` inside the silo from `sql`, over the masks of `purpose`."""
        return self.action("materialize", table=table, sql=sql, purpose=purpose)

    def pii_scan(self, table: str) -> dict[str, Any]:
        return self.action("pii_scan", table=table)

    def egress(self) -> tuple[int, int]:
        """Rows and bytes that have left the silo through its agent so far."""
        counters = self.action("egress")
        return counters["rows"], counters["bytes"]

    def close(self) -> None:
        """Release the connection."""


class InProcessAgentClient(AgentClient):
    def __init__(self, agent: SiloAgent, token: str):
        self.agent = agent
        self.silo = agent.spec.name
        self.caller = agent.authenticate(token)
        self.location = in_process_location(agent)

    def prepare(self, request: PlanFragment) -> PlannedFragment:
        return self.agent.prepare(self.caller, request)

    def attach_keys(self, ticket: str, column: str, keys: KeySet, condition: str = "") -> None:
        self.agent.fragments.attach(self.caller, KeysFor(ticket, column, condition), keys)

    def fetch(self, ticket: str) -> pa.RecordBatchReader:
        schema, batches = self.agent.fragments.redeem(self.caller, ticket)
        return pa.RecordBatchReader.from_batches(schema, batches)

    def action(self, name: str, **body: Any) -> Any:
        return json.loads(json.dumps(self.agent.action(self.caller, name, json.loads(json.dumps(body))), default=str))

    def residual(self, request: RunResidual) -> pa.RecordBatchReader:
        schema, batches = self.agent.residual(self.caller, RunResidual.from_wire(request.to_wire()))
        return pa.RecordBatchReader.from_batches(schema, batches)

    def close(self) -> None:
        self.agent.connector.close()


class FlightAgentClient(AgentClient):
    def __init__(self, silo: str, location: str, token: str, ca_cert: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT):
        self.silo = silo
        self.location = location
        kwargs: dict[str, Any] = {}
        if ca_cert:
            kwargs["tls_root_certs"] = Path(ca_cert).read_bytes()
        self._client = flight.FlightClient(location, **kwargs)
        self._headers = [(b"authorization", f"Bearer {token}".encode())]
        self.timeout = timeout
        self._open: dict[str, flight.FlightStreamReader] = {}  # fetches under way, by ticket
        self._lock = threading.Lock()

    def _options(self, timeout: float | None = None) -> flight.FlightCallOptions:
        return flight.FlightCallOptions(headers=self._headers, timeout=timeout or self.timeout)

    def _error(self, exc: flight.FlightError) -> FedlakeError:
        """A Flight error as a fedlake error naming the silo (refusals keep the agent's one line)."""
        message = str(exc).split(". Detail:")[0].strip()
        if isinstance(exc, flight.FlightUnauthenticatedError):
            return Unauthenticated(message)
        if isinstance(exc, flight.FlightUnauthorizedError):
            return EgressDenied(None, message) if "denied" in message else Forbidden(message)
        if isinstance(exc, flight.FlightUnavailableError):
            return AgentUnavailable(f"silo {self.silo}: its agent at {self.location} is unreachable")
        if isinstance(exc, flight.FlightTimedOutError):
            return AgentUnavailable(f"silo {self.silo}: its agent at {self.location} did not answer within {self.timeout:.0f} s")
        if isinstance(exc, flight.FlightCancelledError):
            return AgentUnavailable(f"silo {self.silo}: the request to its agent at {self.location} was cancelled")
        return FedlakeError(message if message.startswith(("agent ", "silo ")) else f"silo {self.silo}: {message}")

    def prepare(self, request: PlanFragment) -> PlannedFragment:
        try:
            info = self._client.get_flight_info(flight.FlightDescriptor.for_command(request.to_wire()), self._options())
        except flight.FlightError as exc:
            raise self._error(exc) from None
        return PlannedFragment.from_wire(info.app_metadata)

    def attach_keys(self, ticket: str, column: str, keys: KeySet, condition: str = "") -> None:
        try:
            put_keys(self._client, self._options(), KeysFor(ticket, column, condition), keys)
        except flight.FlightError as exc:
            raise self._error(exc) from None

    def fetch(self, ticket: str) -> pa.RecordBatchReader:
        return self._stream(flight.Ticket(Redeem(ticket).to_wire()), ticket)

    def cancel(self, ticket: str) -> None:
        with self._lock:
            reader = self._open.get(ticket)
        if reader is not None:
            reader.cancel()

    def _stream(self, ticket: flight.Ticket, name: str = "") -> pa.RecordBatchReader:
        try:
            reader = self._client.do_get(ticket, self._options())
            schema = reader.schema
        except flight.FlightError as exc:
            raise self._error(exc) from None
        if name:
            with self._lock:
                self._open[name] = reader
        return pa.RecordBatchReader.from_batches(schema, self._named(reader, name))

    def _named(self, reader: flight.FlightStreamReader, name: str):
        """The stream, with a failure mid-way named for its silo; abandoned, it is cancelled at the
        agent (whose fragment then stops), not left to run to its end."""
        done = False
        try:
            while True:
                try:
                    chunk = reader.read_chunk()
                except StopIteration:
                    done = True
                    return
                yield chunk.data
        except flight.FlightError as exc:
            done = True
            raise self._error(exc) from None
        finally:
            with self._lock:
                self._open.pop(name, None)
            if not done:
                reader.cancel()

    def action(self, name: str, **body: Any) -> Any:
        try:
            results = list(self._client.do_action(flight.Action(name, json.dumps(body).encode()), self._options()))
        except flight.FlightError as exc:
            raise self._error(exc) from None
        return json.loads(results[0].body.to_pybytes())

    def residual(self, request: RunResidual) -> pa.RecordBatchReader:
        return self._stream(flight.Ticket(request.to_wire()))

    def close(self) -> None:
        self._client.close()
