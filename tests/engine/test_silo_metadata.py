"""Cached silo metadata is never the wrong version's: a write through any connector of the silo in
this process is seen at once, a change by another process within the recheck interval, on every
kind of silo (a local lake, S3 through moto's server, PostgreSQL over TCP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest

from fedlake.silos import ParquetConnector, PostgresConnector, S3Connector, metadata
from tests.services import create_bucket

REPO = Path(__file__).resolve().parents[2]
PAYMENTS = pa.table({"payment_id": ["P1", "P2", "P3"], "amount": [1.0, 2.0, 3.0]})

# Another process replaces `payments` (one more column, one row) and adds `refunds`.
OTHER_PROCESS = """
import json, sys
import pyarrow as pa
from fedlake.silos import ParquetConnector, PostgresConnector, S3Connector

kind, settings = sys.argv[1], json.loads(sys.argv[2])
connector = {"parquet": ParquetConnector, "s3": S3Connector, "postgres": PostgresConnector}[kind](**settings)
wider = pa.table({"payment_id": ["P9"], "amount": [9.0], "currency": ["EUR"]})
connector.load("payments", wider.schema, wider.to_batches())
connector.load("refunds", wider.schema, wider.to_batches())
connector.close()
"""


@pytest.fixture(params=["parquet", "s3", "postgres"])
def silo(request, tmp_path) -> tuple[str, dict]:
    """A silo's kind and the settings that open a connector on it, here or in another process."""
    if request.param == "parquet":
        return "parquet", {"name": "sg_test", "region": "SG", "root": str(tmp_path / "lake")}
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = f"t-{uuid.uuid4().hex[:10]}"
        create_bucket(endpoint, bucket, "k", "s")
        return "s3", {"name": "us_test", "region": "US", "bucket": bucket, "prefix": "lake", "endpoint_url": endpoint,
                      "access_key_id": "k", "secret_access_key": "s"}
    dsn = request.getfixturevalue("postgres_dsn")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return "postgres", {"name": "eu_test", "region": "EU", "dsn": dsn, "schema": schema}


def open_connector(kind: str, settings: dict):
    return {"parquet": ParquetConnector, "s3": S3Connector, "postgres": PostgresConnector}[kind](**settings)


def test_a_write_through_another_connector_of_the_silo_is_seen_at_once(silo):
    reader, writer = open_connector(*silo), open_connector(*silo)
    writer.load("payments", PAYMENTS.schema, PAYMENTS.to_batches())
    assert reader.list_tables() == ["payments"] and reader.row_count("payments") == 3
    writer.materialize("big_payments", "SELECT payment_id FROM payments WHERE amount > 1")
    writer.load("payments", PAYMENTS.schema, PAYMENTS.slice(0, 1).to_batches())
    assert reader.list_tables() == ["big_payments", "payments"]
    assert reader.row_count("payments") == 1 and reader.row_count("big_payments") == 2
    assert reader.schema("big_payments").names == ["payment_id"]
    assert reader.execute("SELECT count(*) AS n FROM payments").read_all().column("n")[0].as_py() == 1
    writer.drop("big_payments")
    assert reader.list_tables() == ["payments"]
    reader.close()
    writer.close()


def test_a_change_by_another_process_is_seen_within_the_recheck_interval(silo):
    kind, settings = silo
    connector = open_connector(kind, settings)
    connector.load("payments", PAYMENTS.schema, PAYMENTS.to_batches())
    assert connector.list_tables() == ["payments"] and connector.schema("payments").names == ["payment_id", "amount"]
    assert connector.row_count("payments") == 3
    subprocess.run([sys.executable, "-c", OTHER_PROCESS, kind, json.dumps(settings)], check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    changed = time.monotonic()
    while connector.list_tables() != ["payments", "refunds"]:
        assert time.monotonic() - changed < metadata.RECHECK_SECONDS + 2, "a table another process made stays unseen"
        time.sleep(0.05)
    assert connector.schema("payments").names == ["payment_id", "amount", "currency"]
    assert connector.row_count("payments") == 1
    assert connector.execute("SELECT currency FROM payments").read_all().column("currency").to_pylist() == ["EUR"]
    connector.close()


def test_a_column_renamed_by_the_owner_is_seen_within_the_recheck_interval(postgres_dsn):
    """DDL that leaves the table's own catalog row as it was (RENAME COLUMN) still changes its version."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as owner:
        owner.execute(f"CREATE SCHEMA {schema}")
        connector = PostgresConnector("eu_test", "EU", postgres_dsn, schema=schema)
        connector.load("payments", PAYMENTS.schema, PAYMENTS.to_batches())
        assert connector.schema("payments").names == ["payment_id", "amount"]
        owner.execute(f"ALTER TABLE {schema}.payments RENAME COLUMN amount TO amount_eur")
    changed = time.monotonic()
    while connector.schema("payments").names != ["payment_id", "amount_eur"]:
        assert time.monotonic() - changed < metadata.RECHECK_SECONDS + 2, "the renamed column stays unseen"
        time.sleep(0.05)
    connector.close()
