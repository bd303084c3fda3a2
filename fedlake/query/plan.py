"""A federated plan: the fragments, what each agent decided and estimated for them, and where the
residual runs; and the planning calls to the agents, made once per fragment and region."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from fedlake.agent.client import AgentClient
from fedlake.agent.gate import EgressDenied
from fedlake.agent.protocol import Decision, PlanFragment, PlannedFragment
from fedlake.query.cut import Cut, Fragment
from fedlake.query.placement import Site
from fedlake.query.semijoin import SemiJoin


@dataclass
class FragmentRun:
    fragment: Fragment
    planned: PlannedFragment | None = None  # the agent's plan of it: decisions, schema, estimate, ticket
    decisions: list[dict[str, Any]] = field(default_factory=list)
    denied: str = ""  # the agent's refusal of the fragment, naming the column and the rule
    semijoins: list[SemiJoin] = field(default_factory=list)  # keys attached before it runs, to send only rows that can join
    notes: list[str] = field(default_factory=list)  # what the planner chose not to do here, and why
    filters: dict[str, tuple[int, int]] = field(default_factory=dict)  # condition -> (keys, bytes) sent
    at_site: bool = False  # the residual runs in this fragment's silo: its rows stay there
    rows: int | None = None
    bytes: int | None = None
    seconds: float | None = None

    @property
    def estimated_rows(self) -> int | None:
        return self.planned.rows if self.planned else None

    @property
    def estimated_bytes(self) -> int | None:
        return self.planned.bytes if self.planned else None

    @property
    def schema(self) -> pa.Schema | None:
        return self.planned.schema if self.planned else None

    @property
    def sql_in_silo(self) -> str:
        return self.planned.decision.sql_in_silo if self.planned else ""

    @property
    def filter_bytes(self) -> int:
        """The semi-join keys sent into the silo: they cross a border too."""
        return sum(nbytes for _, nbytes in self.filters.values())


@dataclass
class FederatedPlan:
    query: str
    purpose: str
    destination: str
    cut: Cut
    runs: list[FragmentRun]
    site: str | None = None  # the silo whose agent runs the residual; None: the governed zone
    sites: list[Site] = field(default_factory=list)  # the sites considered, with their estimated bytes
    result_estimated_rows: int | None = None
    result_estimated_bytes: int | None = None
    result_rows: int | None = None
    result_bytes: int | None = None
    seconds: float | None = None
    distinct: dict[str, dict[str, int]] = field(default_factory=dict)  # {fragment: {column: distinct values}}

    @property
    def bytes_crossing(self) -> int | None:
        """Every byte that crossed a silo border: the fragments that left their silo, the semi-join
        keys, and the result where the residual ran in a silo."""
        crossing = [r for r in self.runs if not r.at_site]
        if any(r.bytes is None for r in crossing) or (self.site and self.result_bytes is None):
            return None
        return sum(r.bytes + r.filter_bytes for r in crossing) + (self.result_bytes if self.site else 0)

    def bytes_by_silo(self) -> dict[str, int]:
        """Bytes that left each silo."""
        moved: dict[str, int] = {}
        for r in self.runs:
            if not r.at_site:
                moved[r.fragment.silo] = moved.get(r.fragment.silo, 0) + (r.bytes or 0)
        if self.site:
            moved[self.site] = moved.get(self.site, 0) + (self.result_bytes or 0)
        return moved


class AgentPlanning:
    """The agents' planning answers while one query is planned: each fragment is planned once
    (its ticket later redeems it), and its decision for another region asked once."""

    def __init__(self, clients: dict[str, AgentClient], purpose: str, estimate: bool):
        self._clients = clients
        self._purpose = purpose
        self._estimate = estimate
        self._lock = threading.Lock()
        self._planned: dict[tuple[str, str], PlannedFragment | EgressDenied] = {}
        self._explained: dict[tuple[str, str, str], Decision] = {}

    def planned(self, fragment: Fragment) -> PlannedFragment | EgressDenied:
        """The fragment planned for the caller's region, or the gate's refusal."""
        key = (fragment.silo, fragment.sql)
        with self._lock:
            known = self._planned.get(key)
        if known is None:
            try:
                known = self._clients[fragment.silo].prepare(PlanFragment(fragment.sql, self._purpose, estimate=self._estimate))
            except EgressDenied as exc:
                known = exc
            with self._lock:
                self._planned[key] = known
        return known

    def take(self, fragment: Fragment) -> PlannedFragment | EgressDenied:
        """The fragment's plan for one run: a ticket redeems once, so a second run plans again."""
        planned = self.planned(fragment)
        with self._lock:
            self._planned.pop((fragment.silo, fragment.sql), None)
        return planned

    def decision(self, fragment: Fragment, region: str, own: str) -> Decision:
        """The gate's decision for `region`: the plan's own for the caller's region, else asked."""
        if region == own:
            planned = self.planned(fragment)
            if isinstance(planned, PlannedFragment):
                return planned.decision
        key = (fragment.silo, fragment.sql, region)
        with self._lock:
            known = self._explained.get(key)
        if known is None:
            known = self._clients[fragment.silo].explain(fragment.sql, self._purpose, region)
            with self._lock:
                self._explained[key] = known
        return known


def each(call: Callable[[Any], Any], items: list) -> list:
    """`call` on every item, concurrently: the agents answer planning calls independently."""
    if len(items) <= 1:
        return [call(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        return list(pool.map(call, items))
