"""What a materialization tells the Dagster UI, in forms it can plot and people can read.

Bytes that crossed each silo's border are one numeric entry per silo (`bytes_out/<silo>`), so the
UI plots each across materializations. A federated materialization also gets a short table of
the policy decisions (per silo and action: how many columns, which ones, under which rule), the
plan as EXPLAIN ANALYZE prints it but with file paths relative to the deployment and without the
planner's `TRUE AND` filler, and its audit entries as a list a person can read.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import dagster as dg

from fedlake.catalog import Catalog
from fedlake.query import render
from fedlake.query.plan import FederatedPlan

BYTES_OUT_PREFIX = "bytes_out/"
_TRUE_AND = re.compile(r"\bTRUE AND\s+|\s+AND TRUE\b")


def bytes_out_by_silo(moved: dict[str, int]) -> dict[str, dg.MetadataValue]:
    """One numeric entry per silo: the UI plots each of them across materializations."""
    return {f"{BYTES_OUT_PREFIX}{silo}": dg.MetadataValue.int(int(nbytes)) for silo, nbytes in sorted(moved.items())}


def policy_summary(plan: FederatedPlan) -> dg.TableMetadataValue:
    """Per silo and policy action: how many of the silo's columns, which, and the rules that decided."""
    grouped: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: {"columns": [], "rules": set()})
    for run in plan.runs:
        for decision in run.decisions:
            entry = grouped[(run.fragment.silo, decision["action"])]
            # name the silo's own columns (table.column), not the planner's internal aliases
            entry["columns"].extend(source.split(".", 1)[-1] for source in decision.get("sources", ()))
            entry["rules"].update(_rule_name(rule) for rule in decision.get("rules", ()))
    records = [
        dg.TableRecord(
            {
                "silo": silo,
                "action": action,
                "columns": len(set(entry["columns"])),
                "which": ", ".join(sorted(set(entry["columns"]))) or "(computed in the silo)",
                "rules": "; ".join(sorted(entry["rules"])) or "(computed, no source column)",
            }
        )
        for (silo, action), entry in sorted(grouped.items())
    ]
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("silo", "string"),
            dg.TableColumn("action", "string"),
            dg.TableColumn("columns", "int"),
            dg.TableColumn("which", "string"),
            dg.TableColumn("rules", "string"),
        ]
    )
    return dg.MetadataValue.table(records=records, schema=schema)


def _rule_name(rule: str) -> str:
    """`/abs/path/policies.yaml: classifications.financial[0]` -> `classifications.financial[0]`."""
    return rule.split(": ", 1)[1] if ": " in rule else rule


def plan_text(plan: FederatedPlan, catalog: Catalog) -> str:
    """EXPLAIN ANALYZE of the plan, with the deployment's files named relative to silos.yaml's folder."""
    text = render(plan, catalog, analyze=True)
    root = str(Path(catalog.path).resolve().parent) + "/"
    return _TRUE_AND.sub(" ", text.replace(root, "")).replace("( ", "(")


def audit_list(entries: list[dict[str, Any]]) -> dg.MarkdownMetadataValue:
    """The audit entries a materialization wrote, one readable line each."""
    if not entries:
        return dg.MetadataValue.md("(no audit entries)")
    lines = []
    for e in entries:
        moved = f"{int(e.get('rows') or 0):,} rows, {int(e.get('bytes') or 0):,} bytes"
        lines.append(
            f"- **#{e['seq']}** {e.get('operation', '?')} by `{e.get('requester', '?')}` for {e.get('purpose', '?')}: "
            f"{e.get('silo', '?')} -> {e.get('destination', '?')}, **{e.get('decision', '?')}**, {moved}"
        )
    return dg.MetadataValue.md("\n".join(lines))
