"""Great Expectations on a lake runs as SQL in the lake's own DuckDB: every metric is a query DuckDB
runs over the table's view, and only aggregates and a few sample values come back: the rows fetched
from DuckDB are counted, and the connector never streams the table into the agent."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fedlake.catalog import load_catalog
from fedlake.policy.model import load_policy
from fedlake.quality import Expectation, Suite, in_place_sql, validate_in_place
from fedlake.silos import open_silo
from fedlake.silos import spark_session
from fedlake.silos.lake import LakeConnector
from fedlake.silos.spark import SparkLake
from tests.conftest import REPO

ROWS = 200_000
# amounts: i % 1000 - 2, so two in every thousand are below zero (-2, -1) and one is zero
NOT_POSITIVE = 3 * ROWS // 1000
# currencies cycle EUR, USD, SGD: the unanchored pattern 'U' finds EUR and USD and misses SGD
NO_U = ROWS // 3 + (1 if ROWS % 3 > 2 else 0)
TRANSACTIONS = f"""
SELECT i AS txn_id, (i % 1000 - 2)::DOUBLE AS amount, ['EUR', 'USD', 'SGD'][i % 3 + 1] AS currency,
       CASE WHEN i % 2 = 0 THEN 'DE' ELSE 'US' END AS counterparty_country
FROM range({ROWS}) AS r(i)
"""
SUITE = Suite(
    name="large_transactions",
    table="transactions",
    path="tests/engine/test_quality_in_place_sql.py",
    expectations=(
        Expectation("expect_table_row_count_to_be_between", {"min_value": 1}),
        Expectation("expect_column_values_to_be_unique", {"column": "txn_id"}),
        Expectation("expect_column_values_to_be_between", {"column": "amount", "min_value": 0, "strict_min": True}),
        Expectation("expect_column_values_to_match_regex", {"column": "currency", "regex": "U"}),
        Expectation("expect_column_values_to_not_match_regex", {"column": "currency", "regex": "^S"}),
        Expectation("expect_column_values_to_match_regex", {"column": "counterparty_country", "regex": "^[A-Z]{2}$"}),
        Expectation("expect_column_values_to_be_in_set", {"column": "currency", "value_set": ["EUR", "USD", "SGD"]}),
    ),
)


@pytest.fixture(scope="module")
def large_lake(catalog, tmp_path_factory):
    """sg_lake holding a transactions table of 200,000 rows (four of its columns), written by DuckDB itself."""
    home = tmp_path_factory.mktemp("large_lake")
    with open_silo(catalog.silo("sg_lake"), "local", home) as lake:
        assert lake.materialize("transactions", TRANSACTIONS).rows == ROWS
    return home


class Counted:
    """A DBAPI connection or cursor that counts the rows fetched through it (a spy at the boundary
    between DuckDB and Great Expectations)."""

    def __init__(self, inner, fetched: list[int]):
        self._inner, self._fetched = inner, fetched

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def cursor(self):
        return Counted(self._inner.cursor(), self._fetched)

    def fetchall(self):
        rows = self._inner.fetchall()
        self._fetched.append(len(rows))
        return rows

    def fetchmany(self, size=None):
        rows = self._inner.fetchmany(size)
        self._fetched.append(len(rows))
        return rows

    def fetchone(self):
        row = self._inner.fetchone()
        self._fetched.append(0 if row is None else 1)
        return row


@pytest.fixture
def fetched(monkeypatch):
    """The number of rows of every fetch from the lake's DuckDB into GE while the test runs."""
    counts: list[int] = []
    connection = in_place_sql._autocommit_connection()
    monkeypatch.setattr(in_place_sql, "_autocommit_connection", lambda: lambda cursor: Counted(connection(cursor), counts))
    return counts


def by_label(report):
    return {e["label"]: e for e in report["expectations"]}


def test_a_lake_table_is_validated_by_sql_in_its_own_duckdb(large_lake, catalog, fetched, monkeypatch):
    def no_streaming(self, *args, **kwargs):
        raise AssertionError("the lake's rows were streamed into the agent for validation")

    monkeypatch.setattr(LakeConnector, "_stream", no_streaming)
    spec, policy = catalog.silo("sg_lake"), load_policy(REPO / "policies.yaml", catalog)
    with open_silo(spec, "local", large_lake) as lake:
        report = validate_in_place(lake, spec, "transactions", SUITE, policy, "EU", "analytics")

    assert "SQL on DuckDB" in report["engine"] and "sg_lake" in report["engine"]
    results = by_label(report)
    assert results["expect_table_row_count_to_be_between"]["observed_value"] == ROWS
    assert results["expect_column_values_to_be_unique(txn_id)"]["success"]
    amount = results["expect_column_values_to_be_between(amount)"]
    assert amount["unexpected_count"] == NOT_POSITIVE and amount["element_count"] == ROWS
    assert amount["unexpected_values"] is None and "aggregate" in amount["values_withheld"], "withheld exactly as before"
    assert results["expect_column_values_to_match_regex(counterparty_country)"]["success"]
    assert report["failed"] == [
        "expect_column_values_to_be_between(amount)",
        "expect_column_values_to_match_regex(currency)",
        "expect_column_values_to_not_match_regex(currency)",
    ]

    # regex searches as in PostgreSQL and pandas, though DuckDB's own `~` would match the whole value
    searched = results["expect_column_values_to_match_regex(currency)"]
    assert searched["unexpected_count"] == NO_U and searched["unexpected_values"] == ["SGD"]
    assert results["expect_column_values_to_not_match_regex(currency)"]["unexpected_count"] == NO_U

    assert fetched, "GE's metrics were queries run by the lake's DuckDB"
    assert sum(fetched) < 200, "only aggregates and a few sample values came back, never the table's rows"


def test_a_spark_silo_is_validated_on_its_lake_duckdb_without_starting_spark(tmp_path):
    """A lake whose fragments run on Spark keeps its DuckDB next to its files (statistics run there):
    its suites run there as SQL too, on a Delta table as on a plain Parquet one, and Spark is not
    started for them."""
    (tmp_path / "silos.yaml").write_text(yaml.safe_dump({
        "governed_zone": {"region": "SG"},
        "silos": {"spark_lake": {
            "kind": "parquet", "region": "SG",
            "connection": {"local": {"path": "spark_lake", "engine": "spark", "spark_master": "local[1]"}},
            "lake": {"formats": {"events": "parquet"}},
            "tables": {"transactions": {"txn_id": "public", "amount": "financial", "currency": "public"},
                       "events": {"kind": "public"}},
        }},
    }))
    (tmp_path / "policies.yaml").write_text(yaml.safe_dump({
        "purposes": ["analytics"],
        "clients": {"coordinator": {"token_env": "FEDLAKE_TEST_UNSET_TOKEN", "purposes": ["analytics"], "roles": ["coordinate"]}},
        "classifications": {"public": [{"action": "allow"}], "financial": [{"action": "allow"}]},
    }))
    catalog = load_catalog(tmp_path / "silos.yaml")
    policy, spec = load_policy(tmp_path / "policies.yaml", catalog), catalog.silo("spark_lake")
    suite = Suite("spark_transactions", "transactions", "test", (
        Expectation("expect_column_values_to_be_between", {"column": "amount", "min_value": 0}),
        Expectation("expect_column_values_to_be_unique", {"column": "txn_id"}),
    ))
    (tmp_path / "spark_lake" / "events").mkdir(parents=True)
    pq.write_table(pa.table({"kind": ["open", "close", None]}), tmp_path / "spark_lake" / "events" / "part-0.parquet")
    events = Suite("events", "events", "test", (Expectation("expect_column_values_to_not_be_null", {"column": "kind"}),))
    spark_before = spark_session.started()
    with open_silo(spec, "local", tmp_path) as silo:
        assert isinstance(silo, SparkLake)
        silo.materialize("transactions", "SELECT i AS txn_id, (i - 2)::DOUBLE AS amount, 'SGD' AS currency FROM range(100) r(i)")
        report = validate_in_place(silo, spec, "transactions", suite, policy, "SG", "analytics")
        plain = validate_in_place(silo, spec, "events", events, policy, "SG", "analytics")
    assert "SQL on DuckDB, next to the lake of Spark silo spark_lake" in report["engine"]
    assert report["failed"] == ["expect_column_values_to_be_between(amount)"]
    assert by_label(report)["expect_column_values_to_be_between(amount)"]["unexpected_values"] == [-2.0, -1.0]
    assert plain["failed"] == ["expect_column_values_to_not_be_null(kind)"] and "SQL on DuckDB" in plain["engine"]
    assert by_label(plain)["expect_column_values_to_not_be_null(kind)"]["unexpected_count"] == 1
    assert spark_session.started() is spark_before, "validation started no Spark session"
