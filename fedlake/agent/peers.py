"""Agent-to-agent transfer, for a residual the planner places in a silo: the other silos' fragments
go straight to that silo's agent instead of through the governed zone.

The coordinator asks each sending agent to prepare its fragment; the agent plans it through its gate
(for the coordinator's identity and purpose) and returns a one-time capability: a random ticket that
is also the credential. The receiving agent redeems it over Flight, with TLS against the peers' CA,
or directly when both agents live in one process. A capability allows exactly one stream of that one
fragment, and the semi-join keys the stream waits for; nothing else, and only for TRANSFER_SECONDS.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.flight as flight

from fedlake.errors import FedlakeError

if TYPE_CHECKING:
    from fedlake.agent.agent import Caller, SiloAgent

TRANSFER_SECONDS = 600.0
CAPABILITY_SCHEME = "Capability "
IN_PROCESS_SCHEME = "inprocess://"


class TransferRefused(FedlakeError):
    """A capability that is unknown, spent or expired, or asked for more than it allows."""


@dataclass
class Transfer:
    caller: Caller  # who prepared it: the coordinator, for its purpose
    sql: str
    purpose: str
    destination: str  # the region of the silo the fragment goes to
    receiver: str  # that silo
    keep: list[dict[str, Any]] = field(default_factory=list)  # the semi-joins the stream waits for
    expires: float = 0.0
    redeemed: bool = False

    @property
    def keys_ids(self) -> set[str]:
        return {str(k.get("keys")) for k in self.keep}


class Transfers:
    """The capabilities an agent has handed out and not yet seen redeemed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, Transfer] = {}

    def add(self, transfer: Transfer) -> str:
        ticket = secrets.token_hex(32)
        now = time.monotonic()
        transfer.expires = now + TRANSFER_SECONDS
        with self._lock:
            for old in [t for t, x in self._open.items() if x.expires < now]:
                del self._open[old]
            self._open[ticket] = transfer
        return ticket

    def get(self, ticket: str, silo: str) -> Transfer:
        with self._lock:
            transfer = self._open.get(ticket)
        if transfer is None or transfer.expires < time.monotonic():
            raise TransferRefused(f"agent {silo}: unknown, spent or expired transfer capability")
        return transfer

    def take(self, ticket: str, silo: str) -> Transfer:
        """The transfer, once: its stream can be redeemed a single time (its keys may still follow)."""
        transfer = self.get(ticket, silo)
        with self._lock:
            if transfer.redeemed:
                raise TransferRefused(f"agent {silo}: transfer capability already redeemed")
            transfer.redeemed = True  # its semi-join keys may still come
        return transfer


class Peer(ABC):
    """Another silo's agent, as a receiving agent reaches it with one capability."""

    @abstractmethod
    def fetch(self) -> pa.RecordBatchReader:
        """The prepared fragment's stream."""

    @abstractmethod
    def send_keys(self, keys_id: str, bloom: dict | None) -> None:
        """The semi-join filter the prepared fragment waits for (None: send all)."""

    def close(self) -> None:
        """Release the connection."""


class InProcessPeer(Peer):
    def __init__(self, agent: SiloAgent, ticket: str):
        self._agent, self._ticket = agent, ticket

    def fetch(self) -> pa.RecordBatchReader:
        schema, batches = self._agent.redeem(self._agent.authenticate_transfer(self._ticket))
        return pa.RecordBatchReader.from_batches(schema, batches)

    def send_keys(self, keys_id: str, bloom: dict | None) -> None:
        caller = self._agent.authenticate_transfer(self._ticket)
        self._agent.action(caller, "semijoin_keys", {"id": keys_id, "filter": bloom})


class FlightPeer(Peer):
    def __init__(self, location: str, ticket: str, ca_cert: bytes | None, timeout: float = 600):
        self._client = flight.FlightClient(location, **({"tls_root_certs": ca_cert} if ca_cert else {}))
        self._ticket = ticket
        self._options = flight.FlightCallOptions(
            headers=[(b"authorization", f"{CAPABILITY_SCHEME}{ticket}".encode())], timeout=timeout
        )
        self._location = location

    def fetch(self) -> pa.RecordBatchReader:
        try:
            reader = self._client.do_get(flight.Ticket(json.dumps({"transfer": self._ticket})), self._options)
            return reader.to_reader()
        except flight.FlightError as exc:
            raise FedlakeError(f"peer agent at {self._location}: {str(exc).split('. Detail:')[0]}") from None

    def send_keys(self, keys_id: str, bloom: dict | None) -> None:
        body = json.dumps({"id": keys_id, "filter": bloom}).encode()
        try:
            list(self._client.do_action(flight.Action("semijoin_keys", body), self._options))
        except flight.FlightError as exc:
            raise FedlakeError(f"peer agent at {self._location}: {str(exc).split('. Detail:')[0]}") from None

    def close(self) -> None:
        self._client.close()


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
