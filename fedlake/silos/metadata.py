"""Silo metadata kept between requests: which tables a silo holds, and per table its schema, row
count and statistics, each valid for one version of the table.

Every request used to ask its silo again: list the tables, read each named table's schema, count
its rows. A connector now keeps what it learnt, keyed by a version token that changes whenever the
table does (a lake table's Delta version, a PostgreSQL table's catalog row and write counters),
so a value is never served for another version than the one it was computed for.

The silo-wide listing has no cheap version of its own, so it is fetched again at most every
RECHECK_SECONDS (FEDLAKE_METADATA_RECHECK_SECONDS, 1 s by default, the interval at which PostgreSQL's
own cumulative statistics reach other sessions), and at once after a write through any connector of
the same silo in this process. A table another process creates or drops is thus seen within that
interval; until then the agent refuses the new table as unknown, and masks bind only the columns the
cached schema names, so stale metadata fails closed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
V = TypeVar("V")

RECHECK_SECONDS = float(os.environ.get("FEDLAKE_METADATA_RECHECK_SECONDS", "1"))

_generations: dict[str, int] = {}
_generations_lock = threading.Lock()


def written(location: str) -> None:
    """A connector of the silo at `location` changed it: every connector of it in this process lists again."""
    with _generations_lock:
        _generations[location] = _generations.get(location, 0) + 1


def generation(location: str) -> int:
    with _generations_lock:
        return _generations.get(location, 0)


@dataclass
class _Versioned:
    version: Hashable
    values: dict[str, object] = field(default_factory=dict)


@dataclass
class _Listed(Generic[T]):
    value: T
    fetched_at: float
    generation: int


class MetadataCache(Generic[T]):
    """One connector's metadata: the silo-wide listing (of type T) and per-table values by version.

    Safe to share between threads. Concurrent callers of `listing` wait for one fetch and reuse it
    when it began after they arrived, so fifty requests at once ask the silo once, not fifty times."""

    def __init__(self, location: str, recheck_seconds: float | None = None):
        self.location = location
        self.recheck_seconds = RECHECK_SECONDS if recheck_seconds is None else recheck_seconds
        self._lock = threading.Lock()
        self._listing_lock = threading.Lock()
        self._listed: _Listed[T] | None = None
        self._tables: dict[str, _Versioned] = {}

    def listing(self, fetch: Callable[[], T]) -> T:
        """The silo-wide listing, fetched again when older than the recheck interval or after a write."""
        arrived = time.monotonic()
        with self._listing_lock:
            listed = self._listed
            if (
                listed is not None
                and listed.generation == generation(self.location)
                and (listed.fetched_at >= arrived or arrived - listed.fetched_at < self.recheck_seconds)
            ):
                return listed.value
            began, current = time.monotonic(), generation(self.location)
            value = fetch()
            self._listed = _Listed(value, began, current)
            return value

    def value(self, table: str, version: Hashable, kind: str, compute: Callable[[], V]) -> V:
        """`kind` of `table` at `version`, computed once per version. `compute` must describe that
        version (or a newer one: a value a little fresher than its key is never wrong for long)."""
        with self._lock:
            entry = self._tables.get(table)
            if entry is not None and entry.version == version and kind in entry.values:
                return entry.values[kind]  # type: ignore[return-value]
        value = compute()
        with self._lock:
            entry = self._tables.get(table)
            if entry is None or entry.version != version:
                entry = self._tables[table] = _Versioned(version)
            entry.values[kind] = value
        return value

    def written(self, table: str | None = None) -> None:
        """This connector changed `table` (None: the silo): forget it here, list again everywhere."""
        with self._lock:
            if table is None:
                self._tables.clear()
            else:
                self._tables.pop(table, None)
        written(self.location)
