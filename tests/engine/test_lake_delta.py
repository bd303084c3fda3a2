"""Delta Lake tables in the lakes, on the local lake and on S3 (moto's server): a write killed in the
middle (SIGKILL, no chance to clean up) leaves the previous version readable and what it left is
gone after the next write; old versions are read back by time travel until vacuumed; plain Parquet
source tables are read only where silos.yaml declares them; and the gate and masks treat a Delta
table exactly as the same rows in plain Parquet."""

from __future__ import annotations

import re

import json
import os
import posixpath
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from fedlake.agent import EgressDenied, Forbidden, local_agent_client
from fedlake.catalog import load_catalog, parse_catalog
from fedlake.errors import ConfigError, SiloError
from fedlake.policy.model import load_policy
from fedlake.silos import ParquetConnector, S3Connector, open_silo
from fedlake.silos.delta import DeltaLake
from tests.engine.test_egress_gate import ALLOW, CASES, DENY, DP, Case, normalized
from tests.services import create_bucket

REPO = Path(__file__).resolve().parents[2]
FIRST = pa.table({"id": list(range(1000)), "amount": [float(i) for i in range(1000)]})

# A writer that loads an endless table of random (incompressible) numbers into `big`; the test kills it
# once its first bytes are in storage.
WRITER = """
import json, sys
import numpy as np
import pyarrow as pa
from fedlake.silos import ParquetConnector, S3Connector

kind, settings = sys.argv[1], json.loads(sys.argv[2])
connector = ParquetConnector(**settings) if kind == "parquet" else S3Connector(**settings)
schema = pa.schema([("id", pa.int64()), ("amount", pa.float64())])
rng = np.random.default_rng(0)

def batches():
    while True:
        yield pa.record_batch([pa.array(rng.integers(0, 2**62, 200_000)), pa.array(rng.random(200_000))], schema=schema)

connector.load("big", schema, batches())
"""


class Lake:
    """A lake of one kind: how to open its connector (here or in a child process) and look inside."""

    def __init__(self, kind: str, settings: dict, fs: pafs.FileSystem, base: str, root_uri: str, storage_options: dict):
        self.kind, self.settings, self.fs, self.base = kind, settings, fs, base
        self.delta = DeltaLake(root_uri, storage_options)

    def connector(self, **extra):
        settings = {**self.settings, **extra}
        return ParquetConnector(**settings) if self.kind == "parquet" else S3Connector(**settings)

    def files(self, table: str) -> set[str]:
        """Every data file in the table's folder (not its Delta log), as a name relative to it."""
        root = posixpath.join(self.base, table)
        infos = self.fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=True))
        return {posixpath.relpath(i.path, root) for i in infos if i.type == pafs.FileType.File and "_delta_log" not in i.path}

    def committed(self, table: str) -> set[str]:
        """The data files that some version in the Delta log names."""
        names = set()
        for version in self.delta.versions(table):
            snapshot = self.delta.snapshot(table, version)
            names |= {posixpath.basename(uri) for uri in snapshot.files}
        return names

    def uploads(self, table: str) -> list[str]:
        """Unfinished multipart uploads under the table (S3 only): parts stored though no listing shows them."""
        if self.kind != "s3":
            return []
        client = boto3.client("s3", endpoint_url=self.settings["endpoint_url"], aws_access_key_id="k",
                              aws_secret_access_key="s", region_name="us-east-1")
        listed = client.list_multipart_uploads(Bucket=self.settings["bucket"], Prefix=f"lake/{table}/")
        return [u["Key"] for u in listed.get("Uploads", [])]

    def killed_write(self) -> None:
        """Start a writer of `big`, wait until its first bytes are stored, and SIGKILL it."""
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, self.kind, json.dumps(self.settings)],
            env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not (self.files("big") - self.committed("big") or self.uploads("big")):
                assert child.poll() is None, f"the writer ended before it was killed: {child.stderr.read()}"
                assert time.monotonic() < deadline, "the writer stored nothing within 60 s"
                time.sleep(0.05)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        assert child.returncode == -signal.SIGKILL


@pytest.fixture(params=["parquet", "s3"])
def lake(request, tmp_path) -> Lake:
    if request.param == "parquet":
        root = tmp_path / "lake"
        settings = {"name": "sg_test", "region": "SG", "root": str(root), "retention_hours": 0}
        return Lake("parquet", settings, pafs.LocalFileSystem(), str(root), str(root), {})
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"t-{uuid.uuid4().hex[:10]}"
    create_bucket(endpoint, bucket, "k", "s")
    settings = {"name": "us_test", "region": "US", "bucket": bucket, "prefix": "lake", "endpoint_url": endpoint,
                "access_key_id": "k", "secret_access_key": "s", "retention_hours": 0}
    fs = pafs.S3FileSystem(access_key="k", secret_key="s", region="us-east-1", endpoint_override=endpoint.split("://")[1],
                           scheme="http")
    options = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
               "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    return Lake("s3", settings, fs, f"{bucket}/lake", f"s3://{bucket}/lake", options)


def assert_first_version_readable(connector) -> None:
    assert connector.row_count("big") == 1000
    assert connector.execute("SELECT sum(amount) AS s FROM big").read_all().column("s")[0].as_py() == sum(range(1000))


def test_a_killed_write_leaves_the_previous_version_and_the_next_write_removes_what_it_left(lake):
    connector = lake.connector()
    connector.load("big", FIRST.schema, FIRST.to_batches())
    published = connector.table_version("big")
    lake.killed_write()
    left = lake.files("big") - lake.committed("big")
    assert left or lake.uploads("big"), "the killed write stored bytes that no version names"
    assert connector.table_version("big") == published and connector.list_tables() == ["big"]
    assert_first_version_readable(connector)
    assert_first_version_readable(lake.connector())

    made = connector.materialize("big", "SELECT id, amount * 2 AS amount FROM big WHERE id < 10")
    assert made.rows == 10 and made.version == connector.table_version("big") > published
    assert connector.row_count("big") == 10
    assert not (lake.files("big") - lake.committed("big")), "files no version names survived the next write"
    assert not (left & lake.files("big")) and not lake.uploads("big")


def test_time_travel_reads_the_rows_a_version_had_until_it_is_vacuumed(lake):
    keeping = lake.connector(retention_hours=24)
    keeping.load("big", FIRST.schema, FIRST.to_batches())
    made = keeping.materialize("big", "SELECT id, -amount AS amount, 'new' AS note FROM big WHERE id < 5", annotations={"by": "test"})
    assert made.version == 1 and keeping.annotations("big") == {"by": "test"}

    old = keeping.at_versions({"big": 0})
    assert old.table_version("big") == 0 and old.annotations("big") is None
    assert_first_version_readable(old)
    assert [f.name for f in old.schema("big")] == ["id", "amount"]
    assert keeping.execute("SELECT sum(amount) AS s FROM big").read_all().column("s")[0].as_py() == -10.0
    with pytest.raises(SiloError, match="read-only"):
        old.load("big", FIRST.schema, FIRST.to_batches())

    # another engine reads exactly the current version's rows from the files the connector names
    files = keeping.data_files("big")
    assert {posixpath.basename(f) for f in files} <= lake.files("big") and len(files) == 1
    assert lake.delta.snapshot("big").files == tuple(files)

    cleaning = lake.connector()
    made = cleaning.materialize("big", "SELECT 1 AS id, 1.0 AS amount", annotations={"by": "cleaner"})  # retention 0
    assert cleaning.vacuum("big") and cleaning.table_version("big") > made.version, "a vacuum commits too"
    assert cleaning.annotations("big") == {"by": "cleaner"}, "what a write recorded outlives the vacuums after it"
    with pytest.raises(SiloError, match=r"^silo \w+: version 0 of big was vacuumed \(versions are kept 0 h"):
        lake.connector().at_versions({"big": 0})
    with pytest.raises(SiloError, match=r"^silo \w+: table big has no version 99 \(versions in its log: 0, "):
        lake.connector().at_versions({"big": 99})


def test_plain_parquet_tables_are_read_where_declared_and_never_written(tmp_path):
    root = tmp_path / "lake"
    (root / "legacy").mkdir(parents=True)
    pq.write_table(FIRST, root / "legacy" / "part-0.parquet")
    with pytest.raises(SiloError, match=r"^silo sg: table legacy is a folder of plain Parquet files, not a Delta table: "
                                        r"declare it in silos.yaml \(silos.sg.lake.formats.legacy: parquet\)$"):
        ParquetConnector("sg", "SG", root).row_count("legacy")

    lake = ParquetConnector("sg", "SG", root, formats={"legacy": "parquet", "made": "parquet"})
    assert lake.list_tables() == ["legacy"] and lake.row_count("legacy") == 1000 and lake.table_version("legacy") is None
    assert lake.data_files("legacy") == [str(root / "legacy" / "part-0.parquet")]
    with pytest.raises(SiloError, match="declared parquet in silos.yaml: fedlake writes Delta tables only"):
        lake.materialize("made", "SELECT * FROM legacy")
    with pytest.raises(SiloError, match="only a Delta table's version"):
        lake.at_versions({"legacy": 0})

    ParquetConnector("sg", "SG", root).load("made", FIRST.schema, FIRST.to_batches())
    with pytest.raises(SiloError, match="declared parquet in silos.yaml but holds a Delta log"):
        lake.row_count("made")


@pytest.mark.parametrize("lake_block, key, message", [
    ({"formats": {"customers": "iceberg"}}, "silos.sg.lake.formats.customers", "unknown format 'iceberg' (allowed: delta, parquet)"),
    ({"formats": {"nope": "parquet"}}, "silos.sg.lake.formats.nope", "not a table of this silo (tables: customers)"),
    ({"retention_hours": -1}, "silos.sg.lake.retention_hours", "expected a whole number of hours, 0 or more, not -1"),
    ({"vacuum": "daily"}, "silos.sg.lake", "expected a mapping with formats and/or retention_hours"),
])
def test_a_lake_declaration_that_is_wrong_is_refused_in_one_line(lake_block, key, message):
    raw = {"silos": {"sg": {"kind": "parquet", "region": "EU", "tables": {"customers": {"id": "public"}}, "lake": lake_block}}}
    with pytest.raises(ConfigError) as refused:
        parse_catalog(raw, "silos.yaml")
    assert key in str(refused.value) and message in str(refused.value) and "\n" not in str(refused.value)
    raw["silos"]["sg"]["kind"] = "postgres"
    raw["silos"]["sg"]["lake"] = {}
    with pytest.raises(ConfigError, match="only a lake silo"):
        parse_catalog(raw, "silos.yaml")


# Ways to reach a lake's files around the masked relations: each must be refused, Delta or not.
BYPASSES = [
    "SELECT full_name FROM delta_scan('{root}/customers')",
    "SELECT full_name FROM read_parquet('{root}/customers/*.parquet')",
    "SELECT full_name FROM '{root}/customers/*.parquet'",
    "SELECT full_name FROM customers AT (VERSION => 0)",
    "SELECT * FROM delta_scan('{root}/customers', version => 0)",
]


def test_the_gate_and_masks_treat_a_delta_table_exactly_as_the_same_rows_in_plain_parquet(local_deployment, tmp_path):
    """us_lake's tables as Delta (as seeded) and the very same rows as declared plain Parquet: every
    us_lake query of the egress-gate suite, and every attempt to read files around the masks, gets
    the same refusal or the same masked rows from both."""
    home = local_deployment.home
    delta_catalog = local_deployment.catalog
    plain = tmp_path / "us_plain"
    raw = yaml.safe_load((REPO / "silos.yaml").read_text())
    us = raw["silos"]["us_lake"]
    us["connection"]["local"] = {"path": str(plain)}
    us["lake"] = {"formats": {table: "parquet" for table in us["tables"]}}
    (tmp_path / "silos.yaml").write_text(yaml.safe_dump(raw))
    plain_catalog = load_catalog(tmp_path / "silos.yaml")
    with open_silo(delta_catalog.silo("us_lake"), "local", home) as delta_lake:
        delta_root = delta_lake.data_files("customers")[0].rsplit("/customers/", 1)[0]
        for table in us["tables"]:
            (plain / table).mkdir(parents=True)
            pq.write_table(delta_lake.execute(f"SELECT * FROM {table}").read_all(), plain / table / "part-0.parquet")
    clients = {
        "delta": local_agent_client(delta_catalog, load_policy(REPO / "policies.yaml", delta_catalog), "us_lake", home),
        "parquet": local_agent_client(plain_catalog, load_policy(REPO / "policies.yaml", plain_catalog), "us_lake", home),
    }

    def outcome(client, sql: str, purpose: str, to: str):
        try:
            return "answered", normalized(client.query(sql, purpose, to).read_all())
        except (EgressDenied, Forbidden) as exc:
            # the silo's table list depends on what other tests made in the shared lake: not the point here
            return "refused", type(exc).__name__, re.sub(r" \(tables: [^)]*\)", "", str(exc))

    # every query that the masks answer, a sample of the refusals, and the bypasses on both lakes' files
    on_us = [c for c in CASES if c.silo == "us_lake"]
    cases = [c for c in on_us if c.expect not in (DENY, DP)] + [c for c in on_us if c.expect == DENY][::4]
    cases += [Case("us_lake", sql.format(root=root), "aml", DENY) for sql, root in zip(BYPASSES, [delta_root, str(plain)] * 3)]
    try:
        for case in cases:
            seen = {kind: outcome(client, case.sql, case.purpose, case.to) for kind, client in clients.items()}
            assert seen["delta"] == seen["parquet"], case.sql
            assert seen["delta"][0] == ("refused" if case.expect == DENY else "answered"), case.sql
        assert any(c.expect == ALLOW for c in cases) and len(cases) >= 20
        for dp_case in [c for c in on_us if c.expect == DP][:1]:
            shapes = {kind: client.query(dp_case.sql, dp_case.purpose, dp_case.to).read_all().schema.names
                      for kind, client in clients.items()}
            assert shapes["delta"] == shapes["parquet"], dp_case.sql
    finally:
        for client in clients.values():
            client.close()


def test_retraining_pinned_to_a_fingerprint_trains_on_the_versions_it_names(local_deployment, tmp_path):
    """A copy of sg_lake whose transactions are then rewritten: the data fingerprint names the Delta
    versions it covers; a training round pinned to them after the rewrite sees the old rows again."""
    from fedlake.learning.agent_actions import register_learning_actions
    from fedlake.learning.aggregate import FedAvg
    from fedlake.learning.coordinator import FederatedTrainer, QuorumError
    from fedlake.learning.data import data_fingerprint, fingerprint_versions
    from fedlake.learning.models import ModelSpec
    from fedlake.learning.train import TrainConfig

    shutil.copytree(local_deployment.home / "sg_lake", tmp_path / "sg_lake")
    raw = yaml.safe_load((REPO / "silos.yaml").read_text())
    raw["silos"]["sg_lake"]["connection"]["local"] = {"path": str(tmp_path / "sg_lake")}
    (tmp_path / "silos.yaml").write_text(yaml.safe_dump(raw))
    catalog = load_catalog(tmp_path / "silos.yaml")
    client = local_agent_client(catalog, load_policy(REPO / "policies.yaml", catalog), "sg_lake", local_deployment.home)
    register_learning_actions(client.agent)

    def trained_on(name: str, versions: dict[str, int] | None = None) -> str:
        trainer = FederatedTrainer(
            {"sg_lake": client}, ModelSpec("aml_model", "aml", {"buckets": 2**10}), FedAvg(), rounds=1, min_silos=1,
            round_timeout_s=300, checkpoint_dir=tmp_path / name, config=TrainConfig(epochs=1, batch_size=256, device="cpu", max_samples=512),
            secure_aggregation=None, data_versions={"sg_lake": versions} if versions else None,
        )
        return trainer.fit().fingerprints["sg_lake"]

    try:
        with open_silo(catalog.silo("sg_lake"), "local", local_deployment.home) as lake:
            before = data_fingerprint(lake)
            assert fingerprint_versions(before) == {"accounts": 0, "aml_cases": 0, "transactions": 0}
            lake.materialize("transactions", "SELECT * FROM transactions WHERE direction = 'credit'")
            now = data_fingerprint(lake)
        assert fingerprint_versions(now)["transactions"] == 1 and now.split("@")[0] != before.split("@")[0]
        assert trained_on("pinned", fingerprint_versions(before)) == before
        with pytest.raises(QuorumError, match="sg_lake: table transactions has no version 7"):
            trained_on("unknown", {"transactions": 7})
    finally:
        client.close()
