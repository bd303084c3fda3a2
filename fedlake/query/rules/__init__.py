"""The planner's rules, in the order they apply: each takes the query being cut (a `Planning`) and
returns it with one more rewrite done, as sqlglot's optimizer applies its rules in turn. Each rule
has a file of golden cases, tests/engine/query/fixtures/<rule>.sql, showing the fragments and the
residual after it.

1. qualify: known silo.table names, every column qualified, outputs named as DuckDB shows them.
2. push_projections: every part outputs only the columns used above it (EXISTS selects nothing).
3. push_whole: a part that touches one silo only runs there whole.
4. push_joins: one silo's tables joined by their own conditions are joined in that silo.
5. push_scans: every table left is read through a fragment with its own columns and filters.
6. partial_aggregation: aggregates through a cross-silo join are computed partly in the silo,
   where the statistics say that reduces what crosses.
"""

from __future__ import annotations

from collections.abc import Callable

from fedlake.query.rules.partial_aggregation import partial_aggregation
from fedlake.query.rules.planning import Cut, Fragment, Planning, PlanningError
from fedlake.query.rules.push_joins import push_joins
from fedlake.query.rules.push_projections import push_projections
from fedlake.query.rules.push_scans import push_scans
from fedlake.query.rules.push_whole import push_whole
from fedlake.query.rules.qualify import qualify
from fedlake.query.rules.sql import conjuncts

Rule = Callable[[Planning], Planning]

RULES: tuple[Rule, ...] = (qualify, push_projections, push_whole, push_joins, push_scans, partial_aggregation)


def apply_rules(planning: Planning, through: str | None = None) -> Planning:
    """Apply the rules in order, all of them or up to and including the one named `through`."""
    names = [rule.__name__ for rule in RULES]
    if through is not None and through not in names:
        raise ValueError(f"unknown rule '{through}' (rules: {', '.join(names)})")
    for rule in RULES:
        planning = rule(planning)
        if rule.__name__ == through:
            break
    return planning


__all__ = ["RULES", "Cut", "Fragment", "Planning", "PlanningError", "apply_rules", "conjuncts"]
