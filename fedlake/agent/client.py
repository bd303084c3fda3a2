"""Clients of a silo agent: over Flight (prod) or in-process (local), with the same interface.

Both go through the agent's authentication, purpose check, gate and ledger; the in-process client
only skips the network.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from fedlake.agent.agent import Forbidden, SiloAgent, Unauthenticated
from fedlake.agent.gate import EgressDenied
from fedlake.agent.peers import in_process_location
from fedlake.errors import FedlakeError


class AgentClient(ABC):
    silo: str
    location: str  # where the other agents reach this one, for transfers


    @abstractmethod
    def query(self, sql: str, purpose: str, destination: str, keep: list[dict[str, Any]] | None = None) -> pa.RecordBatchReader:
        """Stream a fragment's result, as the gate lets it out (`keep`: semi-joins it waits for)."""

    @abstractmethod
    def estimate(self, sql: str, purpose: str, destination: str) -> dict[str, Any]:
        """Plan without running: estimated rows and bytes and the schema it sends, or the refusal."""

    @abstractmethod
    def action(self, name: str, **body: Any) -> Any: ...

    @abstractmethod
    def residual(self, request: dict[str, Any]) -> pa.RecordBatchReader:
        """Run a residual placed in this silo (see fedlake.agent.placed) and stream its result."""

    def prepare_transfer(
        self, sql: str, purpose: str, destination: str, final: str, receiver: str, keep: list[dict[str, Any]] | None = None
    ) -> str:
        """A one-time capability for a fragment bound for silo `receiver`'s agent (region `destination`),
        where a residual reads it whose result goes to the governed zone (region `final`)."""
        body = {"sql": sql, "purpose": purpose, "destination": destination, "final": final, "receiver": receiver,
                "keep": keep or []}
        return self.action("prepare_transfer", **body)["ticket"]

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

    def explain(self, sql: str, purpose: str, destination: str) -> dict[str, Any]:
        """The gate's decision per output column, and the SQL the silo would run."""
        return self.action("explain", sql=sql, purpose=purpose, destination=destination)

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

    def query(self, sql: str, purpose: str, destination: str, keep: list[dict[str, Any]] | None = None) -> pa.RecordBatchReader:
        schema, batches = self.agent.stream(self.caller, sql, purpose, destination, keep)
        return pa.RecordBatchReader.from_batches(schema, batches)

    def estimate(self, sql: str, purpose: str, destination: str) -> dict[str, Any]:
        plan, schema, rows, nbytes = self.agent.estimated(self.caller, sql, purpose, destination)
        return {"rows": rows, "bytes": nbytes, "schema": schema, "plan": plan}

    def action(self, name: str, **body: Any) -> Any:
        return json.loads(json.dumps(self.agent.action(self.caller, name, body), default=str))

    def residual(self, request: dict[str, Any]) -> pa.RecordBatchReader:
        schema, batches = self.agent.residual(self.caller, json.loads(json.dumps(request)))
        return pa.RecordBatchReader.from_batches(schema, batches)

    def close(self) -> None:
        self.agent.connector.close()


def _from_flight(exc: flight.FlightError) -> FedlakeError:
    message = str(exc).split(". Detail:")[0]
    if isinstance(exc, flight.FlightUnauthenticatedError):
        return Unauthenticated(message)
    if isinstance(exc, flight.FlightUnauthorizedError):
        return EgressDenied(None, message) if "denied" in message else Forbidden(message)
    return FedlakeError(message)


class FlightAgentClient(AgentClient):
    def __init__(self, silo: str, location: str, token: str, ca_cert: str | Path | None = None, timeout: float = 300):
        self.silo = silo
        self.location = location
        kwargs: dict[str, Any] = {}
        if ca_cert:
            kwargs["tls_root_certs"] = Path(ca_cert).read_bytes()
        self._client = flight.FlightClient(location, **kwargs)
        self._options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())], timeout=timeout)

    def _descriptor(
        self, sql: str, purpose: str, destination: str, keep: list[dict[str, Any]] | None = None
    ) -> flight.FlightDescriptor:
        request: dict[str, Any] = {"sql": sql, "purpose": purpose, "destination": destination}
        if keep:
            request["keep"] = keep
        return flight.FlightDescriptor.for_command(json.dumps(request))

    def query(self, sql: str, purpose: str, destination: str, keep: list[dict[str, Any]] | None = None) -> pa.RecordBatchReader:
        try:
            info = self._client.get_flight_info(self._descriptor(sql, purpose, destination, keep), self._options)
            reader = self._client.do_get(info.endpoints[0].ticket, self._options)
            return reader.to_reader()
        except flight.FlightError as exc:
            raise _from_flight(exc) from None

    def estimate(self, sql: str, purpose: str, destination: str) -> dict[str, Any]:
        try:
            info = self._client.get_flight_info(self._descriptor(sql, purpose, destination), self._options)
        except flight.FlightError as exc:
            raise _from_flight(exc) from None
        return {"rows": info.total_records, "bytes": info.total_bytes, "schema": info.schema}

    def action(self, name: str, **body: Any) -> Any:
        try:
            results = list(self._client.do_action(flight.Action(name, json.dumps(body).encode()), self._options))
        except flight.FlightError as exc:
            raise _from_flight(exc) from None
        return json.loads(results[0].body.to_pybytes())

    def residual(self, request: dict[str, Any]) -> pa.RecordBatchReader:
        try:
            return self._client.do_get(flight.Ticket(json.dumps({"residual": request})), self._options).to_reader()
        except flight.FlightError as exc:
            raise _from_flight(exc) from None

    def close(self) -> None:
        self._client.close()
