"""Rule: every table named as a known `silo.table`, every column qualified by its table's alias,
every output named as DuckDB would show it. The other rules read this form only."""

from __future__ import annotations

import difflib
import re

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.qualify import qualify as sqlglot_qualify

from fedlake.agent.lineage import name_outputs
from fedlake.catalog import Catalog
from fedlake.query.rules.planning import Planning, PlanningError


_UNRESOLVED = re.compile(r"Column '([^']+)' could not be resolved|Unknown column: (\S+)")


def check_names(tree: exp.Expression, schema: dict[str, dict[str, dict[str, str]]], silos: set[str]) -> None:
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        if not table.db and isinstance(table.this, exp.Identifier) and table.name not in ctes:
            holders = [silo for silo in sorted(silos) if table.name in schema.get(silo, {})] or sorted(silos)
            raise PlanningError(f"table '{table.name}' names no silo: name it as silo.table, e.g. {holders[0]}.{table.name} "
                                f"(silos: {', '.join(sorted(silos))})")
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
        raise PlanningError(unknown_column(str(exc), tree, planning.schema) or f"the query does not fit the silos' tables: {exc}") from None
    planning.qualified = planning.tree.sql("duckdb")
    return planning


def unknown_column(message: str, tree: exp.Expression, schema: dict[str, dict[str, dict[str, str]]]) -> str | None:
    """For a column the tables do not have: the table(s) it was looked for in and the near matches."""
    found = _UNRESOLVED.search(message)
    if found is None:
        return None
    name = found.group(1) or found.group(2)
    tables = {t.alias_or_name: t for t in tree.find_all(exp.Table) if t.db}
    qualifiers = {c.table for c in tree.find_all(exp.Column) if c.name == name and c.table}
    named = [tables[q] for q in sorted(qualifiers) if q in tables] or list(tables.values())
    where = list(dict.fromkeys(f"{t.db}.{t.name}" for t in named))
    columns = sorted({c for t in named for c in schema.get(t.db, {}).get(t.name, {})})
    near = difflib.get_close_matches(name, columns, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(near)}?" if near else f"its columns: {', '.join(columns)}"
    return f"unknown column '{name}' in {' or '.join(where) or 'the query'} ({hint})"


def check_declared(tree: exp.Expression, schema: dict[str, dict[str, dict[str, str]]], catalog: Catalog) -> None:
    """A column the query names that silos.yaml declares for its table but the table lacks: the
    catalog and the silo disagree, which is the catalog owner's to fix, not a misspelling."""
    names = {c.name for c in tree.find_all(exp.Column)}
    for table in tree.find_all(exp.Table):
        spec = catalog.silos.get(table.db)
        actual = schema.get(table.db, {}).get(table.name)
        if spec is None or actual is None or table.name not in spec.tables:
            continue
        missing = sorted((set(spec.tables[table.name].columns) - set(actual)) & names)
        if missing:
            raise PlanningError(f"column '{missing[0]}' is declared for {table.db}.{table.name} in {catalog.path} "
                                f"(silos.{table.db}.tables.{table.name}) but the table in the silo has no such column: "
                                "correct silos.yaml or the table")
