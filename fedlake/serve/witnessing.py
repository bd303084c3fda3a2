"""Witnessing in a long-lived coordinator: the chain heads of the agents each query used are
recorded in the coordinator's own chain once the query's result has gone to the client, so that a
silo's ledger cannot later be cut short or rewritten unnoticed, without the client waiting for it.
"""

from __future__ import annotations

import logging
import threading

from fedlake.query import FederatedPlan, Federation

log = logging.getLogger("fedlake.serve")

WITNESS_CHAIN = "coordinator"  # the chain under which this process witnesses the agents' heads


class Witnessing:
    """The chain heads of the agents each query used, recorded in the coordinator's chain once its
    result has gone to the client, on one background thread. Queries that end while a witness is
    being written are covered by the next one: a head read later covers every entry before it, so
    one witness entry stands for a whole batch of queries. A witness that fails is logged."""

    def __init__(self) -> None:
        self._pending: list[tuple[Federation, FederatedPlan]] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="fedlake-serve-witness", daemon=True)
        self._thread.start()

    def after(self, federation: Federation, plan: FederatedPlan) -> None:
        with self._changed:
            self._pending.append((federation, plan))
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._closed)
                batch, self._pending = self._pending, []
                if not batch and self._closed:
                    return
            covered: set[str] = set()
            for federation, plan in reversed(batch):
                silos = {r.fragment.silo for r in plan.runs} | ({plan.site} if plan.site else set())
                if silos <= covered:
                    continue
                try:
                    federation.witness_heads(plan, by=WITNESS_CHAIN)
                except Exception:  # noqa: BLE001 - nobody waits for it: it must reach the log
                    log.exception("fedlake serve: could not witness the chain heads of %s", ", ".join(sorted(silos)))
                covered |= silos

    def close(self) -> None:
        """Witness what is pending, then stop."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join(timeout=60)
