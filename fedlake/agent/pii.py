"""PII discovery in place: count values that look like personal identifiers in columns that are
not classified as PII. Only the counts and the column names leave the silo."""

from __future__ import annotations

from typing import Any

from fedlake.catalog import SiloSpec
from fedlake.silos.base import Connector

# Written in the regular-expression syntax that both DuckDB (RE2) and PostgreSQL accept: no \b.
PATTERNS = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+[.][A-Za-z]{2,}",
    "phone": r"[+][0-9]{1,3}[ -]?[0-9][0-9 -]{6,}[0-9]",
    "national_id": r"([0-9]{3}-[0-9]{2}-[0-9]{4}|[STFG][0-9]{7}[A-Z])",
    "iban": r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}",
}


def pii_scan(connector: Connector, spec: SiloSpec, table: str) -> dict[str, Any]:
    """Per text column not classified pii.*: how many values match each pattern."""
    declared = spec.tables.get(table)
    schema = connector.schema(table)
    candidates = [
        f.name
        for f in schema
        if str(f.type) in ("string", "large_string")
        and not (declared and declared.columns.get(f.name, "").startswith("pii."))
    ]
    findings: dict[str, dict[str, int]] = {}
    if candidates:
        parts = [
            f"count(*) FILTER (WHERE regexp_matches(\"{column}\", '{pattern}')) AS \"{column}:{kind}\""
            for column in candidates
            for kind, pattern in PATTERNS.items()
        ]
        counts = connector.execute(f'SELECT {", ".join(parts)} FROM "{table}"').read_all().to_pylist()[0]
        for key, count in counts.items():
            column, kind = key.split(":")
            if count:
                findings.setdefault(column, {})[kind] = int(count)
    return {"table": table, "scanned_columns": candidates, "findings": findings}
