"""A silo's PostgreSQL connections: a few kept open, each used by one thread at a time, each
checked before use so that a server restart costs a reconnect rather than a failed request.

psycopg connections may not be shared by threads that run statements concurrently, and one shared
connection behind a lock makes every fragment's metadata wait for every other's. psycopg_pool's
ConnectionPool would keep connections too, but it connects in background workers and reports a
connection that cannot be made only as a timeout (`couldn't get a connection after 30 sec`),
while a silo error must say why (`password authentication failed`, `connection refused`). Here a
missing connection is made on the caller's thread and its error is the caller's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg.pq import TransactionStatus

from fedlake.errors import SiloError

POOL_SIZE = 8
WAIT_SECONDS = 30.0


class Connections:
    """Up to `size` connections to one DSN. `connection()` lends one, healthy when lent."""

    def __init__(self, silo: str, connect: Callable[[], psycopg.Connection], size: int = POOL_SIZE, wait_seconds: float = WAIT_SECONDS):
        self.silo = silo
        self.size = size
        self._connect = connect
        self._wait_seconds = wait_seconds
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._epoch = 0  # closing the connector starts a new epoch: connections lent before it are not kept
        self._epoch_of: dict[int, int] = {}

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        if not self._slots.acquire(timeout=self._wait_seconds):
            raise SiloError(f"silo {self.silo}: all {self.size} PostgreSQL connections stayed busy for {self._wait_seconds:.0f}s")
        try:
            conn = self._healthy()
            try:
                yield conn
            finally:
                self._give_back(conn)
        finally:
            self._slots.release()

    def _healthy(self) -> psycopg.Connection:
        """An idle connection that still answers (an empty statement, one round trip), else a new one:
        connections the server dropped (a restart, an idle timeout) are closed on the way."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
                epoch = self._epoch
            if conn is None:
                conn = self._connect()
                with self._lock:
                    self._epoch_of[id(conn)] = epoch
                return conn
            try:
                conn.execute("")
                return conn
            except psycopg.Error:
                self._forget(conn)

    def _forget(self, conn: psycopg.Connection) -> None:
        with self._lock:
            self._epoch_of.pop(id(conn), None)
        conn.close()

    def _give_back(self, conn: psycopg.Connection) -> None:
        healthy = not conn.closed and not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE
        with self._lock:
            if healthy and self._epoch_of.get(id(conn)) == self._epoch:
                self._idle.append(conn)
                return
        self._forget(conn)

    def close(self) -> None:
        """Close the idle connections now and the lent ones when they come back; lending goes on."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._epoch += 1
        for conn in idle:
            self._forget(conn)
