"""Process settings for long-lived fedlake processes (agents, the coordinator, Dagster steps): a
heap settled once imports are done, and a clean stop on SIGTERM.

Planning parses SQL with sqlglot, which allocates many small objects and so triggers the cyclic
garbage collector often. In a process that has imported a large framework (Dagster, Great
Expectations, torch), every full collection walks those hundreds of thousands of long-lived objects
again: measured here, 20 parses of the credit workload's SQL took 2.4 s with Dagster loaded and 0.34 s
once the heap was settled. Settling moves what exists now out of the collector's way (it is never
freed, as imported modules never are) and lets young objects accumulate longer between collections.
"""

from __future__ import annotations

import gc
import os
import signal
import threading

STOP_GRACE_SECONDS = 10.0
_YOUNG_THRESHOLD = 50_000  # allocations between young collections (Python's default is 700)
_settled = False


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (one we may not signal counts: it is someone's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tolerate_unaligned_arrow() -> None:
    """Arrow batches that arrive over Flight sit at whatever buffer alignment gRPC gave them. The
    CPUs fedlake runs on read them as they are, but Acero (under DuckDB's scan of Arrow data) prints
    a warning per batch unless told otherwise, and Arrow reads that setting once per process: call
    this before the first scan of foreign Arrow data."""
    os.environ.setdefault("ACERO_ALIGNMENT_HANDLING", "ignore")


def settle_heap() -> None:
    """Call once the process has imported and built what it keeps (a server before it serves);
    later calls do nothing."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_YOUNG_THRESHOLD, older, oldest)


def stop_on_sigterm(server) -> None:
    """On SIGTERM, stop a Flight server. Its shutdown waits for the requests under way, so it runs in
    a thread of its own (from the serving thread's signal handler it would wait for itself); a
    request still running after STOP_GRACE_SECONDS ends with the process."""

    def stop(*_) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()
        timer = threading.Timer(STOP_GRACE_SECONDS, lambda: os._exit(0))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, stop)
