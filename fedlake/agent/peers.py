"""Agent-to-agent transfer, for a residual the planner places in a silo: the other silos' fragments
go straight to that silo's agent instead of through the governed zone.

The coordinator asks each sending agent to prepare its fragment; the agent plans it through its gate
(for the coordinator's identity and purpose) and returns a one-time capability: a random ticket that
is also the credential. The receiving agent redeems it over Flight, with TLS against the peers' CA,
or directly when both agents live in one process. A capability allows exactly one stream of that one
fragment, reduced by the semi-join keys the receiver attaches first; nothing else, and only for
PLAN_SECONDS (fedlake.agent.tickets).
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.flight as flight

from fedlake.agent.protocol import KeysFor, RedeemTransfer
from fedlake.errors import FedlakeError
from fedlake.keyset import KeySet

if TYPE_CHECKING:
    from fedlake.agent.agent import SiloAgent

CAPABILITY_SCHEME = "Capability "
IN_PROCESS_SCHEME = "inprocess://"


class Peer(ABC):
    """Another silo's agent, as a receiving agent reaches it with one capability."""

    @abstractmethod
    def fetch(self, keys: list[tuple[str, KeySet, str]] = ()) -> pa.RecordBatchReader:
        """The prepared fragment's stream, reduced by semi-join keys: (column, keys, condition)."""

    def close(self) -> None:
        """Release the connection."""


class InProcessPeer(Peer):
    def __init__(self, agent: SiloAgent, ticket: str):
        self._agent, self._ticket = agent, ticket

    def fetch(self, keys: list[tuple[str, KeySet, str]] = ()) -> pa.RecordBatchReader:
        caller = self._agent.authenticate_transfer(self._ticket)
        for column, keyset, condition in keys:
            self._agent.fragments.attach(caller, KeysFor(self._ticket, column, condition), keyset)
        schema, batches = self._agent.fragments.redeem(caller, self._ticket)
        return pa.RecordBatchReader.from_batches(schema, batches)


class FlightPeer(Peer):
    def __init__(self, location: str, ticket: str, ca_cert: bytes | None, timeout: float = 600):
        self._client = flight.FlightClient(location, **({"tls_root_certs": ca_cert} if ca_cert else {}))
        self._ticket = ticket
        self._options = flight.FlightCallOptions(
            headers=[(b"authorization", f"{CAPABILITY_SCHEME}{ticket}".encode())], timeout=timeout
        )
        self._location = location

    def fetch(self, keys: list[tuple[str, KeySet, str]] = ()) -> pa.RecordBatchReader:
        try:
            for column, keyset, condition in keys:
                put_keys(self._client, self._options, KeysFor(self._ticket, column, condition), keyset)
            reader = self._client.do_get(flight.Ticket(RedeemTransfer(self._ticket).to_wire()), self._options)
            return reader.to_reader()
        except flight.FlightError as exc:
            raise FedlakeError(f"peer agent at {self._location}: {str(exc).split('. Detail:')[0]}") from None

    def close(self) -> None:
        self._client.close()


def put_keys(client: flight.FlightClient, options: flight.FlightCallOptions, message: KeysFor, keys: KeySet) -> None:
    """Semi-join keys for a planned fragment, as a DoPut stream its descriptor names."""
    table = keys.to_table()
    writer, reader = client.do_put(flight.FlightDescriptor.for_command(message.to_wire()), table.schema, options)
    writer.write_table(table)
    writer.done_writing()
    reader.read()
    writer.close()


_IN_PROCESS: weakref.WeakValueDictionary[str, SiloAgent] = weakref.WeakValueDictionary()


def in_process_location(agent: SiloAgent) -> str:
    """Where agents in this process reach `agent`: a name only this process can resolve."""
    location = f"{IN_PROCESS_SCHEME}{agent.spec.name}/{id(agent):x}"
    _IN_PROCESS[location] = agent
    return location


def open_peer(location: str, ticket: str, ca_cert: bytes | None) -> Peer:
    if location.startswith(IN_PROCESS_SCHEME):
        agent = _IN_PROCESS.get(location)
        if agent is None:
            raise FedlakeError(f"no agent at {location} in this process")
        return InProcessPeer(agent, ticket)
    return FlightPeer(location, ticket, ca_cert)
