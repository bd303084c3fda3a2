"""Rule: every table named as a known `silo.table`, every column qualified by its table's alias,
every output named as DuckDB would show it. The other rules read this form only."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.qualify import qualify as sqlglot_qualify

from fedlake.agent.lineage import name_outputs
from fedlake.query.rules.planning import Planning, PlanningError


def check_names(tree: exp.Expression, schema: dict[str, dict[str, dict[str, str]]], silos: set[str]) -> None:
    for table in tree.find_all(exp.Table):
        if table.catalog:
            raise PlanningError(f"name tables as silo.table, not {table.sql()}")
        if table.db and table.db not in silos:
            raise PlanningError(f"unknown silo '{table.db}' in {table.sql()} (silos: {', '.join(sorted(silos))})")
        if table.db and table.name not in schema.get(table.db, {}):
            known = ", ".join(sorted(schema.get(table.db, {}))) or "none that the query names"
            raise PlanningError(f"unknown table {table.db}.{table.name} (known: {known})")


def qualify(planning: Planning) -> Planning:
    tree = name_outputs(planning.tree)
    check_names(tree, planning.schema, planning.silos)
    try:
        used = {silo: tables for silo, tables in planning.schema.items() if tables}
        planning.tree = sqlglot_qualify(tree, schema=used, dialect="duckdb", validate_qualify_columns=True, quote_identifiers=True)
    except OptimizeError as exc:
        raise PlanningError(f"the query does not fit the silos' tables: {exc}") from None
    planning.qualified = planning.tree.sql("duckdb")
    return planning
