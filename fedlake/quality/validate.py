"""Run an expectation suite where the data is, and let only the validation results out.

PostgreSQL validates itself: GE gets a SQL datasource on the silo's own database and a table asset
in the silo's schema, so every metric is a query PostgreSQL runs and only aggregates and at most a
few sample values reach GE. A lake is read by the connector's embedded DuckDB (only the columns the
suite needs) into a dataframe that stays in the agent's process, next to the lake, and GE's pandas
engine validates it there. Either way the result that leaves is per expectation: its type, column,
kwargs, success, unexpected count and percent, and a few unexpected values only where the policy
lets that column's values leave as they are; otherwise it says that they were withheld and by
which rule.
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
from fedlake.silos.base import Connector
from fedlake.silos.postgres import PostgresConnector

DEFAULT_MAX_VALUES = 5
# Table-level expectations that need the row count only, not every column of a lake table.
ROW_COUNT_TYPES = frozenset({"expect_table_row_count_to_be_between", "expect_table_row_count_to_equal"})
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
    batches = _postgres_batch if isinstance(connector, PostgresConnector) else _dataframe_batch
    with _GX_LOCK:
        context = ephemeral_context()
        with batches(context, connector, table, suite) as (batch, engine):
            result = batch.validate(suite.to_gx(), result_format=result_format)
    disclosure = _Disclosure(policy, spec, table, destination_region, purpose)
    expectations = [_expectation_report(suite, i, result, disclosure, max_values) for i in range(len(suite.expectations))]
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
def _postgres_batch(context, connector: PostgresConnector, table: str, suite: Suite) -> Iterator[tuple[Any, str]]:
    """A GE SQL datasource on the silo's own database. GE's postgres datasource insists on a URL
    with a host, which the local deployment's embedded server (a Unix socket) does not have, so the
    generic SQL datasource gets the connector's DSN through a connection factory instead."""
    import psycopg
    from great_expectations.datasource.fluent.interfaces import TestConnectionError

    dsn, schema = connector._dsn, connector._schema

    def connect() -> psycopg.Connection:
        return psycopg.connect(dsn)

    # GE suggests its postgres datasource for a postgres URL; it cannot take this one (see above).
    warnings.filterwarnings("ignore", message="You are using a generic SQLDatasource")
    try:
        datasource = context.data_sources.add_sql(
            name=f"{connector.name}_in_place", connection_string="postgresql+psycopg://", kwargs={"creator": connect}
        )
    except TestConnectionError as exc:
        raise SiloError(f"silo {connector.name}: Great Expectations cannot connect to PostgreSQL: {exc}") from exc
    try:
        asset = datasource.add_table_asset(name=table, table_name=table, schema_name=schema)
        batch = asset.add_batch_definition_whole_table("whole_table").get_batch()
        yield batch, f"great_expectations SQL on PostgreSQL, in silo {connector.name} (schema {schema})"
    finally:
        datasource.get_engine().dispose()


@contextmanager
def _dataframe_batch(context, connector: Connector, table: str, suite: Suite) -> Iterator[tuple[Any, str]]:
    """The lake's DuckDB reads the suite's columns into a dataframe held by the agent's process."""
    present = [f.name for f in connector.schema(table)]
    needs_all = any(not e.columns() and e.type not in ROW_COUNT_TYPES for e in suite.expectations)
    columns = present if needs_all else [c for c in suite.columns() if c in present] or present[:1]
    projection = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
    frame = connector.execute(f'SELECT {projection} FROM "{table}"').read_all().to_pandas(split_blocks=True, self_destruct=True)
    datasource = context.data_sources.add_pandas(name=f"{connector.name}_in_place")
    asset = datasource.add_dataframe_asset(name=table)
    batch = asset.add_batch_definition_whole_dataframe("whole_table").get_batch(batch_parameters={"dataframe": frame})
    yield batch, f"great_expectations pandas on DuckDB, in the agent of silo {connector.name} ({len(columns)} columns read)"


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


def _expectation_report(suite: Suite, index: int, result, disclosure: _Disclosure, max_values: int) -> dict[str, Any]:
    declared = suite.expectations[index]
    found = [r for r in result.results if (r.expectation_config.meta or {}).get(INDEX_META) == index]
    columns = declared.columns()
    report: dict[str, Any] = {
        "index": index,
        "type": declared.type,
        "label": declared.label(),
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
