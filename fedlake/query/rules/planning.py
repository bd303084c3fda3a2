"""What the planner's rules pass from one to the next: the query being cut (which becomes the
residual), the fragments cut out of it so far, and what every rule may consult (the silos' tables,
the fragments that must send rows, the tables' statistics)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp

from fedlake.errors import FedlakeError
from fedlake.query.statistics import Statistics


class PlanningError(FedlakeError):
    """The query cannot be planned: it does not parse, or names an unknown silo, table or column."""


@dataclass
class Fragment:
    name: str  # how the residual query refers to its result
    silo: str
    sql: str  # DuckDB dialect over the silo's own table names
    kind: str  # "pushed" (a whole part of the query), "join" (its own tables joined) or "scan" (one table)
    tables: tuple[str, ...]
    filters: tuple[str, ...] = ()
    partial: str = ""  # the partial aggregation computed in the silo, if any: "SUM, COUNT(*) per k1, k2"
    notes: tuple[str, ...] = ()  # what the planner chose not to do in this fragment, and why


@dataclass
class Cut:
    sql: str  # the query as qualified
    residual: str  # runs above the fragments, in DuckDB, over the fragments' names
    fragments: list[Fragment] = field(default_factory=list)


@dataclass
class Planning:
    """One query on its way through the rules. `tree` is the statement as parsed, then qualified,
    then cut: every part moved into a silo is replaced by a read of its fragment, so what remains
    of it at the end is the residual."""

    sql: str
    tree: exp.Expression
    schema: dict[str, dict[str, dict[str, str]]]  # {silo: {table: {column: type}}}
    silos: set[str]
    raw: set[str] = field(default_factory=set)  # fragments that send rows, not partial aggregates
    statistics: Statistics = field(default_factory=dict)
    qualified: str = ""
    fragments: list[Fragment] = field(default_factory=list)

    def next_name(self) -> str:
        """Fragment names follow the order the rules cut them in, so they are the same from cut to
        cut of one query (a second cut with `raw` names the same fragments)."""
        return f"__f{len(self.fragments)}"

    def replace(self, node: exp.Expression, replacement: exp.Expression) -> None:
        """Put `replacement` where `node` stands, the whole tree included."""
        if node is self.tree:
            self.tree = replacement
        else:
            node.replace(replacement)

    def attached(self, node: exp.Expression) -> bool:
        """Whether a node is still part of the query being cut (a filter moved into a silo is not)."""
        while node.parent is not None:
            node = node.parent
        return node is self.tree

    def result(self) -> Cut:
        return Cut(sql=self.qualified, residual=self.tree.sql("duckdb"), fragments=self.fragments)
