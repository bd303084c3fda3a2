"""Run an expectation suite where the data is, and let only the validation results out.

The silo's own database validates itself: GE gets a SQL datasource on PostgreSQL, or on a lake's
embedded DuckDB where the lake's tables are views (in_place_sql), and a table asset, so every
metric is a query that database runs and only aggregates and at most a few sample values reach
GE; no table is loaded into the agent's memory. The result that leaves is per expectation: its
type, column, kwargs, success, unexpected count and percent, and a few unexpected values only
where the policy lets that column's values leave as they are; otherwise it says that they were
withheld and by which rule.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fedlake.catalog import SiloSpec
from fedlake.errors import FedlakeError, SiloError
from fedlake.policy.model import Policy
from fedlake.quality._gx import ephemeral_context
from fedlake.quality.suites import INDEX_META, Suite
from fedlake.quality.in_place_sql import in_place_sql
from fedlake.silos.base import Connector

DEFAULT_MAX_VALUES = 5
# GE keeps a process-wide "current context"; one validation at a time keeps contexts from crossing.
_GX_LOCK = threading.Lock()


class QualityError(FedlakeError):
    """A suite could not be run at all (as opposed to running and finding bad data)."""


def validate_in_place(
    connector: Connector,
    spec: SiloSpec,
    table: str,
    suite: Suite,
    policy: Policy,
    destination_region: str,
    purpose: str,
    max_values: int = DEFAULT_MAX_VALUES,
) -> dict[str, Any]:
    """Validate `suite` against `table` inside the silo; returns JSON-able results, never rows."""
    if table not in spec.tables:
        raise QualityError(f"{spec.name}.{table} is not declared in {spec.source_file}; only declared tables have suites")
    present = connector.list_tables()
    if table not in present:
        raise SiloError(f"silo {spec.name}: no table '{table}' to validate (tables: {', '.join(present) or 'none'})")
    started = time.monotonic()
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": max(1, max_values)}
    with _GX_LOCK:
        context = ephemeral_context()
        with _sql_batch(context, connector, table) as (batch, engine):
            result = batch.validate(suite.to_gx(), result_format=result_format)
    disclosure = _Disclosure(policy, spec, table, destination_region, purpose)
    labels = suite.labels()
    expectations = [_expectation_report(suite, i, labels[i], result, disclosure, max_values) for i in range(len(labels))]
    failed = [e for e in expectations if not e["success"]]
    return {
        "silo": spec.name,
        "table": table,
        "suite": suite.name,
        "suite_file": suite.path,
        "success": not failed,
        "evaluated": len(expectations),
        "successful": len(expectations) - len(failed),
        "failed": [e["label"] for e in failed],
        "engine": engine,
        "destination": destination_region,
        "purpose": purpose,
        "seconds": round(time.monotonic() - started, 3),
        "expectations": expectations,
    }


@contextmanager
def _sql_batch(context, connector: Connector, table: str) -> Iterator[tuple[Any, str]]:
    """A GE SQL datasource on the silo's own database (in_place_sql), the table as its asset."""
    from great_expectations.datasource.fluent.interfaces import TestConnectionError

    target = in_place_sql(connector, table)
    if target is None:
        raise QualityError(
            f"silo {connector.name}: Great Expectations validates in place on PostgreSQL and lake silos only, "
            f"not on a silo of kind '{getattr(connector, 'kind', type(connector).__name__)}'"
        )
    try:
        # GE suggests its postgres datasource for a postgres URL; it cannot take a Unix socket (in_place_sql).
        warnings.filterwarnings("ignore", message="You are using a generic SQLDatasource")
        try:
            datasource = context.data_sources.add_sql(
                name=f"{connector.name}_in_place", connection_string=target.url, kwargs={"creator": target.connect}
            )
        except TestConnectionError as exc:
            raise SiloError(f"silo {connector.name}: Great Expectations cannot connect to its database: {exc}") from exc
        try:
            asset = datasource.add_table_asset(name=table, table_name=table, schema_name=target.schema)
            batch = asset.add_batch_definition_whole_table("whole_table").get_batch()
            if target.dialect_module is not None:
                datasource.get_execution_engine().dialect_module = target.dialect_module
            yield batch, target.engine
        finally:
            datasource.get_engine().dispose()
    finally:
        target.close()


class _Disclosure:
    """Whether the values of some columns may leave as they are, per the policy, cached per column."""

    def __init__(self, policy: Policy, spec: SiloSpec, table: str, destination: str, purpose: str):
        self.policy, self.spec, self.table = policy, spec, table
        self.destination, self.purpose = destination, purpose
        self._cache: dict[str, str | None] = {}

    def withheld(self, columns: list[str]) -> str | None:
        """None where every column may leave as it is; otherwise why its values stay in the silo."""
        for column in columns:
            if column not in self._cache:
                self._cache[column] = self._reason(column)
            if self._cache[column]:
                return self._cache[column]
        return None

    def _reason(self, column: str) -> str | None:
        where = f"{self.spec.name}.{self.table}.{column}"
        if column not in self.spec.tables[self.table].columns:
            return f"values withheld: {where} is not declared in {self.spec.source_file}"
        decision = self.policy.decide(self.spec.name, self.table, column, self.destination, self.purpose)
        if decision.action == "allow":
            return None
        return (
            f"values withheld: {where} may leave {self.spec.region} for {self.destination} ({self.purpose}) only as "
            f"{decision.action}, not as it is [rule {decision.rule}]"
        )


def _expectation_report(suite: Suite, index: int, label: str, result, disclosure: _Disclosure, max_values: int) -> dict[str, Any]:
    declared = suite.expectations[index]
    found = [r for r in result.results if (r.expectation_config.meta or {}).get(INDEX_META) == index]
    columns = declared.columns()
    report: dict[str, Any] = {
        "index": index,
        "type": declared.type,
        "label": label,
        "column": columns[0] if len(columns) == 1 else None,
        "columns": columns,
        "kwargs": _jsonable(declared.kwargs),
        "description": declared.description,
        "success": False,
        "element_count": None,
        "unexpected_count": None,
        "unexpected_percent": None,
        "missing_count": None,
        "observed_value": None,
        "unexpected_values": None,
        "values_withheld": None,
        "error": None,
    }
    if not found:
        report["error"] = "Great Expectations returned no result for this expectation"
        return report
    outcome = found[0]
    details = outcome.result or {}
    report["success"] = bool(outcome.success)
    report["error"] = _exception_message(outcome.exception_info)
    for key in ("element_count", "unexpected_count", "unexpected_percent", "missing_count"):
        report[key] = _jsonable(details.get(key))
    withheld = disclosure.withheld(columns)
    if withheld:
        report["values_withheld"] = withheld
        return report
    if "observed_value" in details:
        report["observed_value"] = _jsonable(details["observed_value"])
    if "partial_unexpected_list" in details:
        values: list[Any] = []
        for value in _jsonable(details["partial_unexpected_list"]):
            if value not in values:
                values.append(value)
        report["unexpected_values"] = values[:max_values]
    return report


def _exception_message(info: Any) -> str | None:
    """GE reports a failed metric either flat or keyed by metric id; either way, its first message."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for nested in info.values():
        if isinstance(nested, dict) and nested.get("raised_exception"):
            return str(nested.get("exception_message"))
    return None


def _jsonable(value: Any) -> Any:
    """Results cross the agent boundary as JSON: timestamps as ISO text, NaN as null."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return None if str(value) == "NaT" else value.isoformat()
    if hasattr(value, "item"):
        return _jsonable(value.item())
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)
