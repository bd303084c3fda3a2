"""The egress gate: decides a request before anything runs, by binding masks at every reference.

A request's SQL is checked against the accepted subset (fedlake.agent.subset), every table it names
is bound to its masked relation for the caller's purpose and destination (fedlake.agent.masks), and
aggregate-only columns are routed through differential privacy (fedlake.agent.dp_query). What the
engine then runs sees only masked values, so what leaves is compliant whatever the query computes.

Output-column lineage is kept only to explain: each output column's verdict names the masks of the
base columns it is made of (EXPLAIN, `fedlake policy explain`, the ledger).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp

from fedlake.agent.dp_query import DPQuery, plan_dp
from fedlake.agent.lineage import LineageError, trace
from fedlake.agent.masks import STRICTNESS, BoundQuery, TableMask, bind, table_mask
from fedlake.agent.protocol import ColumnVerdict
from fedlake.agent.subset import Refused
from fedlake.catalog import SiloSpec
from fedlake.errors import FedlakeError
from fedlake.policy.model import Policy



@dataclass
class EgressPlan:
    silo: str
    requester: str
    purpose: str
    destination: str
    fragment: str  # as requested
    sql: str  # as it runs in the silo: the masked relations, then the request (no key material)
    params: dict[str, bytes] = field(repr=False)  # the keys' padded blocks, bound as parameters
    bound: BoundQuery | None = field(default=None, repr=False)
    columns: tuple[ColumnVerdict, ...] = ()
    masks: dict[str, TableMask] = field(default_factory=dict)
    dp: DPQuery | None = None
    notes: list[str] = field(default_factory=list)

    def estimate_statement(self) -> tuple[str, dict[str, bytes]]:
        """What the engine's planner estimates (see BoundQuery.sql), made only when asked."""
        if self.dp is not None or self.bound is None:
            return self.sql, self.params
        return self.bound.sql(b"", self.purpose, estimate=True)  # an estimate binds no key

    def mask_actions(self) -> dict[str, str]:
        """{table.column: action} for every column the request reads: what a destination changes."""
        bound = {f"{t}.{c.column}": c.action for t, m in self.masks.items() for c in m.columns.values()}
        return dict(sorted(bound.items()))

    def explain(self) -> str:
        lines = [f"silo {self.silo} -> {self.destination} for {self.purpose} (requested by {self.requester})"]
        width = max([len(c.output) for c in self.columns] + [6])
        for c in self.columns:
            sources = ", ".join(c.sources) or "(no source column)"
            lines.append(f"  {c.output:<{width}}  {c.action.upper():<12} from {sources}")
            for rule in c.rules:
                lines.append(f"  {'':<{width}}  {'':<12} rule {rule}")
            if c.reason:
                lines.append(f"  {'':<{width}}  {'':<12} {c.reason}")
        if self.dp:
            s = self.dp.settings
            lines.append(f"  differentially private: at most {s.max_rows} rows per subject, epsilon {s.epsilon}, "
                         f"delta {s.delta}; groups released above a noisy threshold")
        lines.extend(f"  {n}" for n in self.notes)
        return "\n".join(lines)


class EgressDenied(FedlakeError):
    """A request that cannot comply; the message names the rule and the column."""

    def __init__(self, plan: EgressPlan | None, message: str):
        self.plan = plan
        super().__init__(message)


class EgressGate:
    def __init__(self, spec: SiloSpec, policy: Policy, key: bytes):
        self.spec = spec
        self.policy = policy
        self.key = key  # the master secret the per-purpose, per-domain keys derive from

    def masks(self, tables: dict[str, dict[str, str]], derived: dict[str, dict], purpose: str, destination: str) -> dict[str, TableMask]:
        return {name: table_mask(self.policy, self.spec.name, name, types, purpose, destination, derived.get(name))
                for name, types in tables.items()}

    def plan(
        self,
        tree: exp.Query,
        requester: str,
        purpose: str,
        destination: str,
        tables: dict[str, dict[str, str]],
        derived: dict[str, dict],
    ) -> EgressPlan:
        """Bind and decide `tree` (already checked against the subset); raises EgressDenied naming
        what cannot comply."""
        fragment = tree.sql("duckdb")
        masks = self.masks(tables, derived, purpose, destination)
        try:
            bound = bind(tree, masks, self.policy.path)
            dp = plan_dp(bound, self.policy.dp, self.key, purpose) if bound.aggregate_refs else None
        except Refused as exc:
            raise EgressDenied(None, f"egress from {self.spec.name} to {destination} for {purpose} denied: {exc}") from None
        sql, params = (dp.sql, dp.params) if dp else bound.sql(self.key, purpose)
        verdicts = self._verdicts(bound, dp)
        return EgressPlan(self.spec.name, requester, purpose, destination, fragment, sql, params, bound, verdicts, masks, dp)

    def _verdicts(self, bound: BoundQuery, dp: DPQuery | None) -> tuple[ColumnVerdict, ...]:
        """Per output column, the masks of the base columns it is made of (explanation only)."""
        by_masked = {m.masked_name: m for m in bound.masks.values()}
        try:
            outputs = [(c.name, [(u.table, u.column) for u in c.uses]) for c in trace(bound.tree.copy()).columns]
        except LineageError:
            used = [(m.masked_name, c) for m in bound.masks.values() for c in sorted(bound.used.get(m.table, ()))]
            outputs = [(name, used) for name in bound.tree.named_selects]
        verdicts = []
        for name, uses in outputs:
            masks = [by_masked[t].columns[c] for t, c in uses if t in by_masked and c in by_masked[t].columns]
            action = max((m.action for m in masks), key=STRICTNESS.__getitem__, default="allow")
            if dp is not None and name not in dp.keys:
                action = "aggregate"
            sources = tuple(sorted({f"{self.spec.name}.{by_masked[t].table}.{c}" for t, c in uses if t in by_masked}))
            rules = tuple(dict.fromkeys(m.rule for m in masks))
            reason = "differentially private" if action == "aggregate" else ""
            verdicts.append(ColumnVerdict(name, action, sources, rules, reason))
        return tuple(verdicts)
