"""Server-side handles of Flight SQL: prepared statements, and query results waiting for their DoGet.

A handle is a random 128-bit value, and each is bound to the identity that made it: presenting
another identity's handle is answered as if it did not exist. Handles expire (a client that never
closes its statements or never fetches its results leaks nothing for long), and there is a bound
on how many one identity may hold, the oldest going first.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

from fedlake.errors import FedlakeError

T = TypeVar("T")


class UnknownHandle(FedlakeError):
    """A handle this server did not issue to this identity, or one that expired or was used."""


@dataclass
class _Entry(Generic[T]):
    owner: str
    value: T
    touched: float


class Handles(Generic[T]):
    def __init__(self, kind: str, ttl_seconds: float, per_identity: int, on_drop=lambda value: None):
        self.kind = kind
        self.ttl = ttl_seconds
        self.per_identity = per_identity
        self._on_drop = on_drop
        self._entries: dict[bytes, _Entry[T]] = {}
        self._lock = threading.Lock()

    def add(self, owner: str, value: T) -> bytes:
        handle = secrets.token_bytes(16)
        now = time.monotonic()
        with self._lock:
            dropped = self._expire(now)
            held = sorted((e.touched, h) for h, e in self._entries.items() if e.owner == owner)
            for _, oldest in held[: max(0, len(held) - self.per_identity + 1)]:
                dropped.append(self._entries.pop(oldest).value)
            self._entries[handle] = _Entry(owner, value, now)
        for value in dropped:
            self._on_drop(value)
        return handle

    def get(self, owner: str, handle: bytes) -> T:
        with self._lock:
            entry = self._entries.get(handle)
            if entry is None or entry.owner != owner:
                raise UnknownHandle(f"fedlake serve: no such {self.kind} (it expired, was closed, or is not yours)")
            entry.touched = time.monotonic()
            return entry.value

    def take(self, owner: str, handle: bytes) -> T:
        """The value, removed: a result is streamed once."""
        with self._lock:
            entry = self._entries.get(handle)
            if entry is None or entry.owner != owner:
                raise UnknownHandle(f"fedlake serve: no such {self.kind} (it expired, was already fetched, or is not yours)")
            del self._entries[handle]
            return entry.value

    def drop(self, owner: str, handle: bytes) -> None:
        self._on_drop(self.take(owner, handle))

    def _expire(self, now: float) -> list[T]:
        stale = [h for h, e in self._entries.items() if now - e.touched >= self.ttl]
        return [self._entries.pop(h).value for h in stale]

    def clear(self) -> None:
        with self._lock:
            values = [e.value for e in self._entries.values()]
            self._entries.clear()
        for value in values:
            self._on_drop(value)

    def __len__(self) -> int:
        return len(self._entries)
