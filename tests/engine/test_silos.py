"""The connectors, against the real thing: PostgreSQL over TCP, moto's S3 server, a local lake."""

from __future__ import annotations

import datetime as dt
import uuid

import pyarrow as pa
import pytest

from fedlake.errors import SiloError
from fedlake.silos import ParquetConnector, PostgresConnector, S3Connector
from fedlake.silos.base import TableStatistics
from fedlake.silos.postgres import with_user
from tests.services import create_bucket

PAYMENTS = pa.table(
    {
        "payment_id": pa.array([f"P{i}" for i in range(6)]),
        "customer_id": pa.array(["c1", "c1", "c2", "c2", "c3", None]),
        "amount": pa.array([10.5, 20.0, 5.25, None, 100.0, 1.0]),
        "paid_at": pa.array([dt.datetime(2025, m, 1, 12) for m in (1, 1, 2, 3, 3, 4)], pa.timestamp("us")),
        "day": pa.array([dt.date(2025, m, 1) for m in (1, 1, 2, 3, 3, 4)], pa.date32()),
        "flagged": pa.array([False, True, False, False, True, False]),
        "items": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
    }
)


@pytest.fixture(params=["parquet", "s3", "postgres", "postgres-executor", "postgres-roles"])
def connector(request, tmp_path):
    if request.param == "parquet":
        c = ParquetConnector("sg_test", "SG", tmp_path / "lake")
    elif request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = f"t-{uuid.uuid4().hex[:10]}"
        create_bucket(endpoint, bucket, "k", "s")
        c = S3Connector("us_test", "US", bucket, "lake", endpoint, "us-east-1", "k", "s")
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        schema = f"t_{uuid.uuid4().hex[:10]}"
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        # by default DuckDB runs fragments over the attached database; the other engine is PostgreSQL's own
        engine = "postgres" if request.param == "postgres-executor" else "duckdb"
        if request.param == "postgres-roles":
            # as a prod agent runs: reads as a read-only role, materializes as a writer into its own schema
            c = PostgresConnector(
                "eu_test",
                "EU",
                with_user(dsn, f"{schema}_reader", uuid.uuid4().hex),
                schema=schema,
                writer_dsn=with_user(dsn, f"{schema}_writer", uuid.uuid4().hex),
                owner_dsn=dsn,
                writer_schema=f"{schema}_made",
            )
            c.ensure_roles()
        else:
            c = PostgresConnector("eu_test", "EU", dsn, schema=schema, engine=engine)
    c.load("payments", PAYMENTS.schema, PAYMENTS.to_batches(max_chunksize=2))
    yield c
    c.close()


def test_lists_tables_and_schema(connector):
    assert connector.list_tables() == ["payments"]
    assert connector.schema("payments").names == PAYMENTS.schema.names
    assert connector.row_count("payments") == 6


def test_statistics_are_computed_in_place(connector):
    stats = connector.statistics("payments")
    by_name = {c.name: c for c in stats.columns}
    assert stats.rows == 6 and stats.bytes > 0
    assert by_name["customer_id"].distinct == 3
    assert by_name["customer_id"].null_fraction == pytest.approx(1 / 6)
    assert float(by_name["amount"].min) == 1.0 and float(by_name["amount"].max) == 100.0
    assert by_name["paid_at"].min.startswith("2025-01-01")


def test_fragment_runs_in_silo_and_counts_egress(connector):
    """A DuckDB-dialect fragment (date_trunc, filters, aggregation) runs inside every kind."""
    assert connector.egress.snapshot() == (0, 0)
    result = connector.execute(
        "SELECT customer_id, date_trunc('month', paid_at) AS month, sum(amount) AS total, count(*) AS n "
        "FROM payments WHERE NOT flagged AND customer_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
        batch_rows=1,
    ).read_all()
    assert result.column("customer_id").to_pylist() == ["c1", "c2", "c2"]
    assert [float(x) for x in result.column("total").to_pylist()[:2]] == [10.5, 5.25]
    rows, nbytes = connector.egress.snapshot()
    assert rows == 3
    assert nbytes == sum(b.nbytes for b in result.to_batches())


def test_materialize_keeps_data_in_the_silo(connector):
    made = connector.materialize("customer_totals", "SELECT customer_id, sum(items) AS items FROM payments GROUP BY 1")
    assert made.rows == 4
    assert sorted(connector.list_tables()) == ["customer_totals", "payments"]
    assert connector.egress.snapshot() == (0, 0), "materializing inside the silo must not move rows out"
    again = connector.materialize("customer_totals", "SELECT customer_id FROM payments WHERE flagged")
    assert again.rows == 2 and connector.row_count("customer_totals") == 2


def test_failed_materialization_leaves_nothing_behind(connector):
    with pytest.raises(SiloError, match="no_such_column"):
        connector.materialize("broken", "SELECT no_such_column FROM payments")
    assert connector.list_tables() == ["payments"]


def test_failed_materialization_keeps_the_previous_version(connector):
    connector.materialize("totals", "SELECT count(*) AS n FROM payments")
    with pytest.raises(SiloError):
        connector.materialize("totals", "SELECT CAST('not a number' AS INTEGER) AS n FROM payments")
    assert connector.execute("SELECT n FROM totals").read_all().column("n").to_pylist() == [6]


def test_failed_load_leaves_nothing_behind(connector):
    def batches():
        yield PAYMENTS.to_batches()[0]
        raise RuntimeError("generator died mid-load")

    with pytest.raises(RuntimeError, match="mid-load"):
        connector.load("half", PAYMENTS.schema, batches())
    assert "half" not in connector.list_tables()


def test_unknown_table_is_a_clear_error(connector):
    with pytest.raises(SiloError, match="no table 'nope'"):
        connector.statistics("nope")


def test_column_statistics_estimate_rows_and_distinct_values(connector):
    """What the planner estimates cardinalities from: PostgreSQL's pg_stats after ANALYZE, DuckDB's
    HyperLogLog over a lake table; exact at this size, and renewed with each new version."""
    stats = connector.column_statistics("payments")
    assert stats.rows == 6
    assert stats.distinct["payment_id"] == 6 and stats.distinct["customer_id"] == 3 and stats.distinct["flagged"] == 2
    connector.materialize("by_customer", "SELECT customer_id, count(*) AS n FROM payments GROUP BY 1")
    assert connector.column_statistics("by_customer").rows == 4
    connector.materialize("by_customer", "SELECT customer_id, count(*) AS n FROM payments WHERE customer_id = 'c1' GROUP BY 1")
    assert connector.column_statistics("by_customer").rows == 1
    assert connector.column_statistics("by_customer").distinct == {"customer_id": 1, "n": 1}


def test_column_statistics_of_a_table_never_analyzed(postgres_dsn):
    """A table loaded behind fedlake's back has no pg_stats yet: DuckDB counts over the attached table."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.events AS SELECT g AS id, g % 7 AS kind FROM generate_series(1, 700) g")
    connector = PostgresConnector("eu_test", "EU", postgres_dsn, schema=schema)
    stats = connector.column_statistics("events")
    assert stats == TableStatistics(rows=700, distinct={"id": 700, "kind": 7})
    connector.close()


def test_errors_name_the_silo(connector):
    with pytest.raises(SiloError, match=f"silo {connector.name}: invalid table name"):
        connector.materialize("../escape", "SELECT 1 AS n")
    with pytest.raises(SiloError, match=f"silo {connector.name}: "):
        connector.execute("SELECT no_such_column FROM payments").read_all()
    with pytest.raises(SiloError, match=f"silo {connector.name}: no table 'nope'"):
        connector.column_statistics("nope")
