"""Semi-join keys on their way to the fragment that waits for them."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from fedlake.bloom import BloomFilter, key_family
from fedlake.errors import FedlakeError

SEMIJOIN_WAIT_SECONDS = 600.0
SEMIJOIN_BUFFER_BYTES = 256 * 1024 * 1024  # what a fragment may compute ahead of its keys


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

    def filtered(
        self, batches: Iterator[pa.RecordBatch], schema: pa.Schema, keep: list[tuple[str, str]], fragment: list[str], silo: str
    ) -> Iterator[pa.RecordBatch]:
        """Compute while the keys are on their way (holding at most SEMIJOIN_BUFFER_BYTES); then send
        only the rows that may join."""
        buffered, held = [], 0
        for batch in batches:
            buffered.append(batch)
            held += batch.nbytes
            if held > SEMIJOIN_BUFFER_BYTES or all(self.arrived(keys) for _, keys in keep):
                break
        filters = []
        for column, keys in keep:
            raw = self.take(keys, SEMIJOIN_WAIT_SECONDS, silo)
            bloom = BloomFilter.from_dict(raw) if raw is not None else None
            if bloom is not None and key_family(schema.field(column).type) == bloom.family:
                fragment.append(f"-- semi-join: only rows whose {column} may be one of {bloom.keys} keys "
                                f"(Bloom filter, {bloom.nbytes} bytes)")
                filters.append((column, bloom))
        for batch in itertools.chain(buffered, batches):
            for column, bloom in filters:
                batch = batch.filter(bloom.may_contain(batch.column(column)))
            yield batch
