"""Planned fragments waiting to be redeemed: a fragment is planned once, and its ticket names the
stored plan for the steps that follow (keys attached, rows fetched).

A ticket is a random 256-bit name, redeemable once, only by the identity that planned it (or, for a
transfer, by the peer agent holding it as its capability), within PLAN_SECONDS. The store is
bounded: beyond its capacity the oldest plans go first, so abandoned plans cost nothing for long.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from fedlake.errors import FedlakeError
from fedlake.keyset import MAX_KEYS_BYTES, KeySet

if TYPE_CHECKING:
    from fedlake.agent.gate import EgressPlan

PLAN_SECONDS = 600.0
CAPACITY = 4096


class TicketRefused(FedlakeError):
    """A ticket that is unknown, spent, expired or someone else's."""


@dataclass
class Planned:
    identity: str  # who planned it: only they redeem it
    plan: EgressPlan
    schema: pa.Schema
    note: str = ""  # for the ledger: where the rows go, if not to the caller
    keys: dict[str, tuple[KeySet, str]] = field(default_factory=dict)  # column -> (keys, condition)
    expires: float = 0.0

    @property
    def keys_bytes(self) -> int:
        return sum(keys.nbytes for keys, _ in self.keys.values())


class PlannedFragments:
    def __init__(self, silo: str, capacity: int = CAPACITY, seconds: float = PLAN_SECONDS):
        self._silo = silo
        self._lock = threading.Lock()
        self._open: OrderedDict[str, Planned] = OrderedDict()
        self._capacity = capacity
        self._seconds = seconds

    def add(self, planned: Planned) -> str:
        ticket = secrets.token_hex(32)
        now = time.monotonic()
        planned.expires = now + self._seconds
        with self._lock:
            while self._open and (len(self._open) >= self._capacity or next(iter(self._open.values())).expires < now):
                self._open.popitem(last=False)
            self._open[ticket] = planned
        return ticket

    def _get(self, ticket: str, identity: str) -> Planned:
        planned = self._open.get(ticket)
        if planned is None or planned.expires < time.monotonic() or planned.identity != identity:
            raise TicketRefused(f"agent {self._silo}: unknown, spent or expired ticket (plan the fragment again)")
        return planned

    def peek(self, ticket: str, identity: str) -> Planned:
        """The plan, left in place."""
        with self._lock:
            return self._get(ticket, identity)

    def attach(self, ticket: str, identity: str, column: str, keys: KeySet, condition: str) -> Planned:
        """Keys its rows must match on `column`, checked against what the plan sends."""
        with self._lock:
            planned = self._get(ticket, identity)
            if planned.plan.dp is not None:
                raise FedlakeError(f"agent {self._silo}: a differentially private release takes no semi-join keys")
            if column not in planned.schema.names:
                raise FedlakeError(f"agent {self._silo}: semi-join keys name column '{column}', which the fragment does not return")
            if planned.keys_bytes + keys.nbytes > MAX_KEYS_BYTES:
                raise FedlakeError(f"agent {self._silo}: semi-join keys over {MAX_KEYS_BYTES} bytes for one fragment")
            planned.keys[column] = (keys, condition)
            return planned

    def take(self, ticket: str, identity: str) -> Planned:
        """The plan, once."""
        with self._lock:
            planned = self._get(ticket, identity)
            del self._open[ticket]
            return planned
