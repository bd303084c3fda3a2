"""Data quality, one asset check per expectation suite, on the source asset it describes.

Each silo's agent runs the suite of a table in place (GE's SQL on PostgreSQL itself, or on the
lake's own DuckDB) and sends back only the results: per expectation its
success, unexpected count and percent, and a few unexpected values where the policy lets them
leave for the governed region as they are. The checks on the tables that feed the join layer and
the training data are blocking: a failed suite stops the assets downstream of its own table in the
same run, and only those (each suite is its own check, its own step). Where two expectations of a
suite share a label (same type, same columns), the agent's result names each by its place in the
suite file (Suite.labels).
"""


from collections.abc import Iterable
from typing import Any

import dagster as dg

from fedlake.catalog import Catalog, SiloSpec
from fedlake.errors import FedlakeError
from fedlake.quality import VALIDATE_ACTION, QualitySuites, Suite

CHECK_NAME = "expectation_suite"
QUALITY_PURPOSE = "analytics"
# The tables the governed join layer and the training data are built from.
BLOCKING_TABLES = ("transactions", "customers", "accounts", "loans")


def suite_check(spec: SiloSpec, table: str, suite: Suite, governed_region: str, blocking: bool) -> dg.AssetChecksDefinition:
    """One check (one step) per suite, so a failing blocking suite stops only its own table's downstream."""

    @dg.asset_check(
        asset=dg.AssetKey([spec.name, table]),
        name=CHECK_NAME,
        description=(
            f"Great Expectations suite '{suite.name}' ({len(suite.expectations)} expectations, {suite.path}), "
            f"validated in place by the agent of {spec.name}; only results leave."
            + (" Blocking: a failure stops the assets downstream of this table." if blocking else "")
        ),
        blocking=blocking,
        metadata={"suite": suite.name, "suite_file": suite.path, "expectations": suite.labels()},
        required_resource_keys={spec.name},
    )
    def validate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        agent = getattr(context.resources, spec.name).agent()
        key = dg.AssetKey([spec.name, table])
        try:
            report = agent.action(VALIDATE_ACTION, table=table, purpose=QUALITY_PURPOSE, destination=governed_region)
        except FedlakeError as exc:
            return dg.AssetCheckResult(
                asset_key=key,
                check_name=CHECK_NAME,
                passed=False,
                severity=dg.AssetCheckSeverity.ERROR,
                description=f"could not validate {spec.name}.{table} in place: {exc}",
                metadata={"error": str(exc)},
            )
        return check_result(key, report)

    return validate


def quality_checks(
    catalog: Catalog, suites: QualitySuites, blocking_tables: Iterable[str] = BLOCKING_TABLES
) -> list[dg.AssetChecksDefinition]:
    """A check per suite of every silo; those on `blocking_tables` gate what is downstream of their table."""
    blocking = set(blocking_tables)
    return [
        suite_check(spec, table, suite, catalog.governed_region, table in blocking)
        for spec in catalog.silos.values()
        for table in spec.tables
        if (suite := suites.for_table(spec.name, table)) is not None
    ]


def check_result(asset_key: dg.AssetKey, report: dict[str, Any]) -> dg.AssetCheckResult:
    """The agent's report as a check result: the failing expectations in the description, every
    expectation's outcome in the metadata."""
    expectations = report["expectations"]
    failed = [e for e in expectations if not e["success"]]
    where = f"{report['silo']}.{report['table']}"
    if failed:
        description = f"{len(failed)} of {len(expectations)} expectations failed in {where}: " + "; ".join(
            _describe(e) for e in failed
        )
    else:
        description = f"all {len(expectations)} expectations of suite '{report['suite']}' met in {where}"
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=CHECK_NAME,
        passed=bool(report["success"]),
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "suite": report["suite"],
            "suite_file": report["suite_file"],
            "evaluated": report["evaluated"],
            "failed": len(failed),
            "failed_expectations": dg.MetadataValue.json([e["label"] for e in failed]),
            "results": dg.MetadataValue.md(_markdown(expectations)),
            "expectations": dg.MetadataValue.json([_compact(e) for e in expectations]),
            "engine": report["engine"],
            "validated_for": f"{report['purpose']} -> {report['destination']}",
            "seconds_in_silo": report["seconds"],
        },
    )


def _describe(e: dict[str, Any]) -> str:
    if e["error"]:
        return f"{e['label']}: error: {e['error']}"
    text = f"{e['label']}: {e['unexpected_count']} unexpected"
    if e["unexpected_percent"] is not None:
        text += f" ({e['unexpected_percent']:.2f}%)"
    if e["unexpected_values"]:
        text += f", e.g. {', '.join(repr(v) for v in e['unexpected_values'])}"
    elif e["values_withheld"]:
        text += ", values withheld by policy"
    return text


def _compact(e: dict[str, Any]) -> dict[str, Any]:
    keep = ("label", "type", "column", "kwargs", "success", "element_count", "unexpected_count", "unexpected_percent",
            "observed_value", "unexpected_values", "values_withheld", "error")
    return {k: e[k] for k in keep if e[k] is not None}


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown(expectations: list[dict[str, Any]]) -> str:
    lines = ["| expectation | success | unexpected | unexpected % | values |", "|---|---|---|---|---|"]
    for e in expectations:
        if e["error"]:
            values = f"error: {e['error']}"
        elif e["values_withheld"]:
            values = "(withheld by policy)"
        elif e["unexpected_values"]:
            values = ", ".join(repr(v) for v in e["unexpected_values"])
        elif e["observed_value"] is not None:
            values = f"observed {e['observed_value']}"
        else:
            values = ""
        percent = "" if e["unexpected_percent"] is None else f"{e['unexpected_percent']:.2f}"
        count = "" if e["unexpected_count"] is None else e["unexpected_count"]
        lines.append(f"| {_cell(e['label'])} | {'yes' if e['success'] else 'NO'} | {count} | {percent} | {_cell(values)} |")
    return "\n".join(lines)
