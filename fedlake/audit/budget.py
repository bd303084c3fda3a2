"""Privacy budgets: what a requester × purpose × silo may spend, and the check made as a spend is
recorded. The check reads the ledger inside the transaction that appends the spend, after every
entry placed before it (earlier batches, and earlier entries of its own batch), so concurrent
requests can never together spend more than the budget holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from fedlake.audit.entry import utc
from fedlake.errors import FedlakeError

NOT_SPENT = ("denied", "over_budget")  # decisions that release nothing, so spend no privacy budget
_SLACK = 1e-9  # float sums of many small charges must not refuse the last one that fits exactly

Run = Callable[[str, list[Any]], list[tuple]]  # one SQL statement with `?` placeholders and `{table}`


class BudgetExceeded(FedlakeError):
    """A request would spend more privacy budget than its requester × purpose × silo holds."""


@dataclass(frozen=True)
class Budget:
    """The epsilon and delta a requester may spend for a purpose at a silo since a moment (ISO)."""

    epsilon: float
    delta: float
    since: str


def spent(run: Run, requester: str, purpose: str, silo: str, since: str) -> tuple[float, float]:
    """The epsilon and delta recorded as spent by a requester for a purpose at a silo since a moment."""
    placeholders = ", ".join("?" for _ in NOT_SPENT)
    [(epsilon, delta)] = run(
        "SELECT coalesce(sum(epsilon), 0), coalesce(sum(delta), 0) FROM {table} WHERE requester = ? AND purpose = ? "
        f"AND silo = ? AND recorded_at >= ? AND decision NOT IN ({placeholders})",
        [requester, purpose, silo, utc(since), *NOT_SPENT],
    )
    return float(epsilon), float(delta)


def refusal(run: Run, entry: dict[str, Any], budget: Budget) -> str | None:
    """Why the entry's spend does not fit its budget, or None when it does."""
    spent_epsilon, spent_delta = spent(run, entry["requester"], entry["purpose"], entry["silo"], budget.since)
    epsilon_over = spent_epsilon + entry["epsilon"] > budget.epsilon * (1 + _SLACK) + _SLACK
    delta_over = spent_delta + entry["delta"] > budget.delta * (1 + _SLACK) + _SLACK
    if not (epsilon_over or delta_over):
        return None
    text = (f"privacy budget exceeded for {entry['requester']} / {entry['purpose']} at {entry['silo']} since {budget.since}: "
            f"spent epsilon {spent_epsilon:g} + requested {entry['epsilon']:g} > limit {budget.epsilon:g}")
    if delta_over:
        text += f", spent delta {spent_delta:g} + requested {entry['delta']:g} > limit {budget.delta:g}"
    return text
