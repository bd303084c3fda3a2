"""Errors that leave an agent carry nothing from the data.

A refusal (the gate, the subset, identity, budget) is decided from the request, the policy and the
caller's identity alone, so its message may leave: it names the column and the rule. Anything else
(an engine error, a failed cast, a broken connection) may quote a value, so the caller gets a stable
code and an error id; the full text stays in the silo's log under that id.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator

import pyarrow as pa

from fedlake.errors import FedlakeError, SiloError

log = logging.getLogger("fedlake.agent")


class AgentFailure(FedlakeError):
    """A request that failed inside the silo; only its code and error id leave."""

    def __init__(self, silo: str, code: str, error_id: str):
        self.silo = silo
        self.code = code
        self.error_id = error_id
        super().__init__(f"agent {silo}: the request failed in the silo [code {code}, error id {error_id}]; "
                         "the full text stays in the silo's log")


# What an error's class says about where it came from, as the stable code a caller sees.
def failure_code(exc: BaseException) -> str:
    name = type(exc).__name__
    if "Interrupt" in name or "Timeout" in name or "Cancel" in name or "INTERRUPT" in str(exc).upper():
        return "CANCELLED"
    if "Conversion" in name or "Cast" in name or "InvalidInput" in name or "OutOfRange" in name:
        return "INVALID_VALUE"
    if "Connection" in name or "Operational" in name or "IO" in name:
        return "SILO_UNAVAILABLE"
    return "SILO_ENGINE"


def contain(silo: str, exc: BaseException, what: str) -> AgentFailure:
    """Log the full error under a new id and return what may leave instead."""
    error_id = uuid.uuid4().hex[:16]
    code = failure_code(exc)
    log.error("agent %s: %s failed [code %s, error id %s]: %s: %s", silo, what, code, error_id, type(exc).__name__, exc)
    return AgentFailure(silo, code, error_id)


def guarded(batches: Iterator[pa.RecordBatch], fail: Callable[[BaseException], AgentFailure]) -> Iterator[pa.RecordBatch]:
    """Batches whose engine errors, raised while streaming, are contained like any other; fedlake's
    own deliberate errors (a semi-join's keys that never came) pass."""
    try:
        yield from batches
    except AgentFailure:
        raise
    except FedlakeError as exc:
        if isinstance(exc, SiloError):
            raise fail(exc) from None
        raise
    except Exception as exc:  # noqa: BLE001 - every other error is contained here
        raise fail(exc) from None
