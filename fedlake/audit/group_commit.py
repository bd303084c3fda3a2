"""Group commit: concurrent appends to one ledger table share one transaction, so one commit (one
fsync) makes a whole batch durable.

Every caller queues its entry and waits. When no batch is being committed, one waiting caller
becomes the leader: it takes every queued entry (up to MAX_BATCH), places them in one transaction,
and wakes the callers of that batch; meanwhile the next batch gathers. A caller returns only once
its batch has committed, so no caller believes in an entry that a crash could still lose; if the
commit fails, every caller of that batch gets the error and nothing of the batch is written.

Under load the callers of one batch come back together: a leader that saw a batch of several waits
up to GATHER_SECONDS for as many to queue again, rather than committing the first alone. A store
that keeps its connection (PostgreSQL) keeps it while batches follow each other and lets it go
once none has committed for IDLE_SECONDS.
"""

from __future__ import annotations

import os
import threading
import time

from fedlake.audit.chain import Pending, place
from fedlake.audit.stores import Store

MAX_BATCH = 256  # entries in one transaction: bounds a batch's latency and its statement sizes
GATHER_SECONDS = 0.002  # the most a leader waits for the callers of the previous batch to queue again
IDLE_SECONDS = 0.05  # how long the store keeps its connection after the queue ran dry


class GroupCommit:
    """The queue of one ledger table in this process, with at most one batch committing at a time."""

    def __init__(self, store: Store, max_batch: int = MAX_BATCH):
        self.store = store
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # a new entry queued
        self._finished = threading.Condition(self._lock)  # a batch committed (or failed)
        self._queue: list[Pending] = []
        self._committing = False
        self._last_batch = 0
        self._last_commit = 0.0
        self._closing = False  # a timer will let the store's connection go once appends stop
        self.batches = 0  # transactions this queue has committed or tried

    def append(self, pending: Pending) -> Pending:
        """Queue the entry and return once it is durable (or raise what kept its batch from committing)."""
        with self._lock:
            self._queue.append(pending)
            self._arrived.notify()
            while not pending.done:
                if self._committing:
                    self._finished.wait()
                else:
                    self._lead()
        if pending.failure is not None:
            raise pending.failure
        return pending

    def _lead(self) -> None:
        """Commit one batch (called with the lock held; released while the database works)."""
        self._committing = True
        try:
            self._gather()
            batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
            self._last_batch = len(batch)
            self._lock.release()
            try:
                self._commit(batch)
            finally:
                self._lock.acquire()
                self._last_commit = time.monotonic()
                self.batches += 1
                for done in batch:
                    done.done = True
            if self.store.keeps_connection and not self._closing:
                self._closing = True
                self._close_later(IDLE_SECONDS)
        finally:
            self._committing = False
            self._finished.notify_all()

    def _close_later(self, seconds: float) -> None:
        closer = threading.Timer(seconds, self._let_go_when_idle)
        closer.daemon = True
        closer.start()

    def _let_go_when_idle(self) -> None:
        """Close the store's connection once no batch has committed for IDLE_SECONDS (one timer at a time)."""
        with self._lock:
            idle = time.monotonic() - self._last_commit
            if self._committing or self._queue or idle < IDLE_SECONDS:
                self._close_later(max(IDLE_SECONDS - idle, 0.005))
                return
            self._closing = False
            self._committing = True
        try:
            self.store.let_go()
        finally:
            with self._lock:
                self._committing = False
                self._finished.notify_all()

    def _gather(self) -> None:
        deadline = time.monotonic() + GATHER_SECONDS
        while len(self._queue) < min(self._last_batch, self.max_batch):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._arrived.wait(left)

    def _commit(self, batch: list[Pending]) -> None:
        try:
            with self.store.transaction() as run:
                place(run, batch)
        except BaseException as exc:  # the batch is not written: each of its callers learns why
            for pending in batch:
                pending.failure = exc
            if not isinstance(exc, Exception):
                raise


_queues: dict[tuple[str, ...], GroupCommit] = {}
_queues_guard = threading.Lock()
_inherited: list[object] = []  # a forked parent's connections: kept alive, never used, never closed


def _start_afresh_in_child() -> None:
    """A forked child must neither use nor close its parent's connections and locks: it starts
    queues of its own, and its stores connect anew."""
    global _queues_guard
    for queue in _queues.values():
        _inherited.append(queue.store.forget())
    _queues.clear()
    _queues_guard = threading.Lock()


os.register_at_fork(after_in_child=_start_afresh_in_child)


def group_commit_for(store: Store) -> GroupCommit:
    """The one queue of this process for the store's table, whichever ledger object appends to it."""
    with _queues_guard:
        if store.key not in _queues:
            _queues[store.key] = GroupCommit(store)
        return _queues[store.key]
