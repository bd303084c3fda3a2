"""The egress gate: before any byte leaves a silo, decide every output column from its lineage.

For each output column the gate traces the source columns it is made of, asks the policy what may
happen to each on its way to the destination for the declared purpose, and either lets it pass,
rewrites it inside the silo (pseudonymize a key, generalize a date or postcode, keep only groups of
at least k distinct subjects) or refuses the whole request, naming the rule, the source column and
the output column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from fedlake.agent.lineage import AGGREGATED, COUNTED, DIRECT, SourceUse, analyse, combine
from fedlake.catalog import SiloSpec
from fedlake.errors import FedlakeError
from fedlake.policy.model import Policy
from fedlake.policy.transforms import generalize, pseudonymize

SUBJECTS_COLUMN = "__fl_subjects"


@dataclass(frozen=True)
class ColumnVerdict:
    output: str
    action: str  # allow | pseudonymize | generalize | aggregate | deny
    sources: tuple[str, ...]  # silo.table.column
    rules: tuple[str, ...]
    reason: str = ""
    generalize: dict[str, Any] | None = None
    k: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"output": self.output, "action": self.action, "sources": list(self.sources), "rules": list(self.rules), "reason": self.reason}


@dataclass
class EgressPlan:
    silo: str
    requester: str
    purpose: str
    destination: str
    fragment: str  # as requested
    sql: str  # as it runs in the silo
    columns: tuple[ColumnVerdict, ...]
    k: int | None = None
    small_groups: str = "suppress"
    notes: list[str] = field(default_factory=list)

    @property
    def denied(self) -> tuple[ColumnVerdict, ...]:
        return tuple(c for c in self.columns if c.action == "deny")

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
        if self.k:
            lines.append(f"  groups with fewer than {self.k} distinct subjects are {'suppressed' if self.small_groups == 'suppress' else 'refused'}")
        lines.extend(f"  {n}" for n in self.notes)
        return "\n".join(lines)


class EgressDenied(FedlakeError):
    """A request that cannot comply; the message names the rule, the source and the output column."""

    def __init__(self, plan: EgressPlan | None, message: str):
        self.plan = plan
        super().__init__(message)


def _denial_message(plan: EgressPlan) -> str:
    parts = []
    for c in plan.denied:
        parts.append(f"output column '{c.output}' (from {', '.join(c.sources) or 'no column'}): {c.reason} [rule {'; '.join(c.rules)}]")
    return f"egress from {plan.silo} to {plan.destination} for {plan.purpose} denied: " + " | ".join(parts)


@dataclass(frozen=True)
class DerivedColumn:
    """A column of a table fedlake materialized in the silo: the base columns it was made of."""

    uses: tuple[SourceUse, ...]


class EgressGate:
    def __init__(self, spec: SiloSpec, policy: Policy, key: bytes):
        self.spec = spec
        self.policy = policy
        self.key = key

    def plan(
        self,
        sql: str,
        requester: str,
        purpose: str,
        destination: str,
        schema: dict[str, dict[str, str]],
        derived: dict[str, dict[str, DerivedColumn]],
    ) -> EgressPlan:
        """Decide every output column of `sql`; raises EgressDenied naming what cannot comply."""
        lineage = analyse(sql, schema)
        verdicts = []
        for column in lineage.columns:
            uses = self.base_uses(column.uses, derived)
            verdicts.append(self._decide(column.name, uses, lineage.aggregate, purpose, destination))
        plan = EgressPlan(self.spec.name, requester, purpose, destination, sql, lineage.expression.sql("duckdb"), tuple(verdicts))

        if any(v.action == "aggregate" for v in verdicts):
            plan.k = max(v.k for v in verdicts if v.action == "aggregate")
            plan.small_groups = self.policy.small_groups
            subject = self._subject_reference(lineage.top_tables, derived)
            if subject is None or not isinstance(lineage.expression, exp.Select):
                plan.columns = tuple(
                    ColumnVerdict(v.output, "deny", v.sources, v.rules, "aggregate rule: k distinct subjects can be checked only "
                                  "when the top-level SELECT reads a table with a declared subject column")
                    if v.action == "aggregate" else v
                    for v in verdicts
                )
            else:
                select = lineage.expression
                select = select.select(
                    exp.alias_(exp.Count(this=exp.Distinct(expressions=[exp.column(subject[1], table=subject[0], quoted=True)])), SUBJECTS_COLUMN, quoted=True),
                    copy=True,
                )
                plan.sql = select.sql("duckdb")
        if plan.denied:
            raise EgressDenied(plan, _denial_message(plan))
        return plan

    def base_uses(self, uses: tuple[SourceUse, ...], derived: dict[str, dict[str, DerivedColumn]]) -> list[SourceUse]:
        """Uses of declared base columns; a derived table's column stands for the columns it was made of."""
        base = []
        for use in uses:
            if use.table in self.spec.tables:
                base.append(use)
            elif use.table in derived and use.column in derived[use.table]:
                for inner in derived[use.table][use.column].uses:
                    mode = combine(inner.mode, use.mode)
                    base.append(SourceUse(inner.table, inner.column, mode))
            else:
                base.append(SourceUse(use.table, use.column, "unknown"))
        return base

    def _decide(self, output: str, uses: list[SourceUse], aggregate_query: bool, purpose: str, destination: str) -> ColumnVerdict:
        sources = tuple(sorted({f"{self.spec.name}.{u.table}.{u.column}" for u in uses}))
        rules: list[str] = []
        needs: set[str] = set()
        ks: list[int] = []
        spec_generalize = None
        for use in uses:
            name = f"{self.spec.name}.{use.table}.{use.column}"
            if use.mode == "unknown":
                return ColumnVerdict(output, "deny", sources, (f"{self.spec.source_file}: silos.{self.spec.name}.tables",),
                                     f"{name} has no classification: the table is neither declared nor made by fedlake")
            decision = self.policy.decide(self.spec.name, use.table, use.column, destination, purpose)
            rules.append(decision.rule)
            if decision.action == "allow":
                continue
            if decision.action == "deny":
                return ColumnVerdict(output, "deny", sources, (decision.rule,), f"{name} may not leave for {purpose} to {destination}")
            if decision.action in ("pseudonymize", "generalize"):
                if use.mode == COUNTED:
                    continue
                if use.mode != DIRECT:
                    return ColumnVerdict(output, "deny", sources, (decision.rule,),
                                         f"{name} may leave only {decision.action}d as itself; a value computed from it cannot")
                needs.add(decision.action)
                spec_generalize = decision.generalize
                continue
            if decision.action == "aggregate":
                if use.mode in (COUNTED, AGGREGATED) or (use.mode == DIRECT and aggregate_query):
                    needs.add("aggregate")
                    ks.append(decision.k or self.policy.k)
                    continue
                return ColumnVerdict(output, "deny", sources, (decision.rule,),
                                     f"{name} may leave only aggregated (COUNT, SUM, AVG) over groups of at least {decision.k} subjects")
        unique_rules = tuple(dict.fromkeys(rules))
        rewrites = needs & {"pseudonymize", "generalize"}
        if rewrites:
            if len({(u.table, u.column) for u in uses}) != 1 or len(needs) != 1:
                return ColumnVerdict(output, "deny", sources, unique_rules,
                                     "a column that must be rewritten may not be combined with other columns or rules")
            action = rewrites.pop()
            return ColumnVerdict(output, action, sources, unique_rules, generalize=spec_generalize)
        if "aggregate" in needs:
            return ColumnVerdict(output, "aggregate", sources, unique_rules, k=max(ks))
        return ColumnVerdict(output, "allow", sources, unique_rules)

    def _subject_reference(self, top_tables: dict[str, str], derived: dict[str, dict[str, DerivedColumn]]) -> tuple[str, str] | None:
        for alias, table in top_tables.items():
            if table in self.spec.tables and table in self.policy.subjects:
                return alias, self.policy.subjects[table]
            for column, info in derived.get(table, {}).items():
                if any(u.mode == DIRECT and self.policy.subjects.get(u.table) == u.column for u in info.uses):
                    return alias, column
        return None

    def apply(self, plan: EgressPlan, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Rewrite and filter batches so that only what the plan allows leaves."""
        by_name = {c.output: c for c in plan.columns}
        fields = []
        for f in schema:
            if f.name == SUBJECTS_COLUMN:
                continue
            verdict = by_name.get(f.name)
            if verdict is None:
                raise EgressDenied(plan, f"output column '{f.name}' was not planned by the gate")
            fields.append(pa.field(f.name, pa.string()) if verdict.action in ("pseudonymize", "generalize") else f)
        out_schema = pa.schema(fields)

        rewrites = {c.output: (c.action, c.generalize) for c in plan.columns if c.action in ("pseudonymize", "generalize")}

        def rewrite() -> Iterator[pa.RecordBatch]:
            for batch in batches:
                if plan.k:
                    big_enough = pc.greater_equal(batch.column(SUBJECTS_COLUMN), plan.k)
                    batch = batch.filter(big_enough)
                yield rewrite_batch(batch, out_schema, rewrites, self.key)

        return out_schema, rewrite()


def rewrite_batch(
    batch: pa.RecordBatch, schema: pa.Schema, rewrites: dict[str, tuple[str, dict[str, Any] | None]], key: bytes
) -> pa.RecordBatch:
    """The columns of `schema` from `batch`, those in `rewrites` ({column: (action, generalize spec)})
    pseudonymized or generalized, in the silo."""
    arrays = []
    for f in schema:
        column = batch.column(f.name)
        if f.name in rewrites:
            action, spec = rewrites[f.name]
            column = pseudonymize(column, key) if action == "pseudonymize" else generalize(column, spec or {})
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
