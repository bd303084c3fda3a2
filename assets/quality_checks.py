"""Data quality, one asset check per expectation suite, on the source asset it describes.

Each silo's agent runs the suite of a table in place (GE against PostgreSQL itself, or on the lake
through DuckDB inside the agent's process) and sends back only the results: per expectation its
success, unexpected count and percent, and a few unexpected values where the policy lets them
leave for the governed region as they are. The checks on the tables that feed the join layer and
the training data are blocking, so a failed suite stops every downstream asset in the same run.
"""


from collections.abc import Iterable
from typing import Any

import dagster as dg

from fedlake.catalog import Catalog, SiloSpec
from fedlake.errors import FedlakeError
from fedlake.quality import VALIDATE_ACTION, QualitySuites

CHECK_NAME = "expectation_suite"
QUALITY_PURPOSE = "analytics"
# The tables the governed join layer and the training data are built from.
BLOCKING_TABLES = ("transactions", "customers", "accounts", "loans")


def silo_quality_checks(
    spec: SiloSpec, suites: QualitySuites, governed_region: str, blocking_tables: Iterable[str]
) -> dg.AssetChecksDefinition | None:
    """One multi-asset check per silo, so one agent client serves all of the silo's suites."""
    blocking = set(blocking_tables)
    tables = [t for t in spec.tables if suites.for_table(spec.name, t) is not None]
    if not tables:
        return None
    check_specs = []
    for table in tables:
        suite = suites.for_table(spec.name, table)
        check_specs.append(
            dg.AssetCheckSpec(
                CHECK_NAME,
                asset=dg.AssetKey([spec.name, table]),
                description=(
                    f"Great Expectations suite '{suite.name}' ({len(suite.expectations)} expectations, {suite.path}), "
                    f"validated in place by the agent of {spec.name}; only results leave."
                    + (" Blocking: a failure stops the assets downstream." if table in blocking else "")
                ),
                blocking=table in blocking,
                metadata={"suite": suite.name, "suite_file": suite.path, "expectations": [e.label() for e in suite.expectations]},
            )
        )

    @dg.multi_asset_check(
        specs=check_specs,
        name=f"{spec.name}_data_quality",
        description=f"Expectation suites of silo {spec.name}, validated where the data lies.",
        required_resource_keys={spec.name},
        can_subset=True,
    )
    def validate(context: dg.AssetCheckExecutionContext):
        agent = getattr(context.resources, spec.name).agent()
        for check_key in context.selected_asset_check_keys:
            table = check_key.asset_key.path[-1]
            try:
                report = agent.action(VALIDATE_ACTION, table=table, purpose=QUALITY_PURPOSE, destination=governed_region)
            except FedlakeError as exc:
                yield dg.AssetCheckResult(
                    asset_key=check_key.asset_key,
                    check_name=CHECK_NAME,
                    passed=False,
                    severity=dg.AssetCheckSeverity.ERROR,
                    description=f"could not validate {spec.name}.{table} in place: {exc}",
                    metadata={"error": str(exc)},
                )
                continue
            yield check_result(check_key.asset_key, report)

    return validate


def quality_checks(
    catalog: Catalog, suites: QualitySuites, blocking_tables: Iterable[str] = BLOCKING_TABLES
) -> list[dg.AssetChecksDefinition]:
    """The data-quality checks of every silo that has suites; `blocking_tables` gate what is downstream."""
    blocking = tuple(blocking_tables)
    checks = [silo_quality_checks(spec, suites, catalog.governed_region, blocking) for spec in catalog.silos.values()]
    return [c for c in checks if c is not None]


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
