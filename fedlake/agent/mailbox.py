"""Semi-join keys on their way to the fragment that waits for them."""

from __future__ import annotations

import threading
from typing import Any

from fedlake.errors import FedlakeError


class Mailbox:
    """Semi-join keys by id: they may arrive before or after the fragment that waits for them starts."""

    def __init__(self, capacity: int = 1024):
        self._lock = threading.Lock()
        self._slots: dict[str, tuple[threading.Event, list]] = {}
        self._capacity = capacity

    def _slot(self, key: str) -> tuple[threading.Event, list]:
        with self._lock:
            if key not in self._slots and len(self._slots) >= self._capacity:
                self._slots.pop(next(iter(self._slots)))  # keys nobody came for
            return self._slots.setdefault(key, (threading.Event(), []))

    def arrived(self, key: str) -> bool:
        return self._slot(key)[0].is_set()

    def put(self, key: str, value: Any) -> None:
        event, box = self._slot(key)
        box.append(value)
        event.set()

    def take(self, key: str, timeout: float, silo: str) -> Any:
        event, box = self._slot(key)
        if not event.wait(timeout):
            raise FedlakeError(f"agent {silo}: the semi-join keys '{key}' did not arrive within {timeout:.0f} s")
        with self._lock:
            self._slots.pop(key, None)
        return box[0]
