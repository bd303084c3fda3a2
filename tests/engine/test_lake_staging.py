"""A lake write killed in the middle (SIGKILL, no chance to clean up) on the local lake and on S3:
the previous version stays readable, and what the killed write left is gone after the next write or
the next connector start, while a write still running is left alone."""

from __future__ import annotations

import json
import os
import posixpath
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from fedlake.silos import ParquetConnector, S3Connector
from fedlake.silos.lake_staging import STAGING, Staging
from tests.services import create_bucket

REPO = Path(__file__).resolve().parents[2]
FIRST = pa.table({"id": list(range(1000)), "amount": [float(i) for i in range(1000)]})

# A writer that loads a big table slowly, says when its first batches are written, and never ends.
WRITER = """
import json, sys, time
import pyarrow as pa
from fedlake.silos import ParquetConnector, S3Connector

kind, settings = sys.argv[1], json.loads(sys.argv[2])
connector = ParquetConnector(**settings) if kind == "parquet" else S3Connector(**settings)
schema = pa.schema([("id", pa.int64()), ("amount", pa.float64())])

def batches():
    for i in range(10**9):
        yield pa.record_batch([pa.array(range(i * 50_000, (i + 1) * 50_000)), pa.array([1.0] * 50_000)], schema=schema)
        if i == 3:
            print("writing", flush=True)
        if i >= 3:
            time.sleep(0.05)

connector.load("big", schema, batches())
"""


class Lake:
    """A lake of one kind: how to open its connector (here or in a child process) and look inside."""

    def __init__(self, kind: str, settings: dict, fs: pafs.FileSystem, base: str):
        self.kind, self.settings, self.fs, self.base = kind, settings, fs, base

    def connector(self):
        return ParquetConnector(**self.settings) if self.kind == "parquet" else S3Connector(**self.settings)

    def start_writer(self) -> subprocess.Popen:
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, self.kind, json.dumps(self.settings)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        line = child.stdout.readline()
        assert line.strip() == "writing", f"the writer did not start writing: {line!r}"
        return child

    def killed_write(self) -> None:
        child = self.start_writer()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert child.returncode == -signal.SIGKILL

    def versions(self, table: str) -> set[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(posixpath.join(self.base, table), allow_not_found=True))
        return {posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory}

    def registrations(self, table: str) -> set[str]:
        selector = pafs.FileSelector(posixpath.join(self.base, STAGING, table), allow_not_found=True)
        return {posixpath.basename(i.path) for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File}

    def uploads(self, table: str) -> list[str]:
        """Unfinished multipart uploads under the table (S3 only): parts stored though no listing shows them."""
        if self.kind != "s3":
            return []
        client = boto3.client("s3", endpoint_url=self.settings["endpoint_url"], aws_access_key_id="k",
                              aws_secret_access_key="s", region_name="us-east-1")
        listed = client.list_multipart_uploads(Bucket=self.settings["bucket"], Prefix=f"lake/{table}/")
        return [u["Key"] for u in listed.get("Uploads", [])]

    def current(self, table: str) -> str:
        with self.fs.open_input_stream(posixpath.join(self.base, table, "_current")) as f:
            return f.read().decode()


@pytest.fixture(params=["parquet", "s3"])
def lake(request, tmp_path) -> Lake:
    if request.param == "parquet":
        root = tmp_path / "lake"
        return Lake("parquet", {"name": "sg_test", "region": "SG", "root": str(root)}, pafs.LocalFileSystem(), str(root))
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"t-{uuid.uuid4().hex[:10]}"
    create_bucket(endpoint, bucket, "k", "s")
    settings = {"name": "us_test", "region": "US", "bucket": bucket, "prefix": "lake", "endpoint_url": endpoint,
                "access_key_id": "k", "secret_access_key": "s"}
    fs = pafs.S3FileSystem(access_key="k", secret_key="s", region="us-east-1", endpoint_override=endpoint.split("://")[1],
                           scheme="http")
    return Lake("s3", settings, fs, f"{bucket}/lake")


def assert_first_version_readable(connector) -> None:
    assert connector.row_count("big") == 1000
    assert connector.execute("SELECT sum(amount) AS s FROM big").read_all().column("s")[0].as_py() == sum(range(1000))


def test_a_killed_write_leaves_the_previous_version_and_the_next_start_sweeps_it(lake):
    connector = lake.connector()
    connector.load("big", FIRST.schema, FIRST.to_batches())
    published = lake.current("big")
    lake.killed_write()
    orphans = lake.versions("big") - {published}
    assert len(orphans) == 1 and lake.registrations("big"), "the killed write left its version folder and registration"
    assert lake.kind != "s3" or lake.uploads("big"), "on S3 the killed write left an unfinished multipart upload"
    assert_first_version_readable(connector)
    assert connector.list_tables() == ["big"]

    restarted = lake.connector()
    assert lake.versions("big") == {published} and not lake.registrations("big") and not lake.uploads("big")
    assert_first_version_readable(restarted)


def test_the_next_write_sweeps_what_a_killed_write_left(lake):
    connector = lake.connector()
    connector.load("big", FIRST.schema, FIRST.to_batches())
    lake.killed_write()
    assert len(lake.versions("big")) == 2
    assert_first_version_readable(connector)
    made = connector.materialize("big", "SELECT id, amount * 2 AS amount FROM big WHERE id < 10")
    assert made.rows == 10 and connector.row_count("big") == 10
    assert lake.versions("big") == {lake.current("big")} and not lake.registrations("big") and not lake.uploads("big")


def test_a_write_in_progress_is_not_swept(lake):
    """Another connector starting (and sweeping) while a live process writes leaves that write alone."""
    connector = lake.connector()
    connector.load("big", FIRST.schema, FIRST.to_batches())
    child = lake.start_writer()
    try:
        in_progress = lake.versions("big") - {lake.current("big")}
        uploads = lake.uploads("big")
        lake.connector()
        assert lake.versions("big") - {lake.current("big")} == in_progress and lake.registrations("big")
        assert lake.uploads("big") == uploads
    finally:
        child.kill()
        child.wait(10)


def test_a_writer_on_another_host_is_trusted_until_the_grace_period(lake):
    """A process on another host cannot be probed: its registration holds its version for the grace period."""
    connector = lake.connector()
    connector.load("big", FIRST.schema, FIRST.to_batches())
    staging = Staging(lake.fs, lake.base, grace_seconds=60)
    for version, age in (("v-elsewhere-recent", 10), ("v-elsewhere-stale", 120)):
        lake.fs.create_dir(posixpath.join(lake.base, "big", version), recursive=True)
        with lake.fs.open_output_stream(posixpath.join(lake.base, "big", version, "part-00000.parquet")) as f:
            f.write(b"PAR1 partial")
        with lake.fs.open_output_stream(posixpath.join(lake.base, STAGING, "big", f"{version}.json")) as f:
            f.write(json.dumps({"host": "another-host", "pid": 1, "pid_started": 0.0, "started": time.time() - age}).encode())
    assert staging.sweep("big", lambda table: lake.current(table)) == ["v-elsewhere-stale"]
    assert lake.versions("big") == {lake.current("big"), "v-elsewhere-recent"}
    assert_first_version_readable(connector)


def test_a_killed_first_write_leaves_no_table_and_folders_fedlake_did_not_write_stay(lake):
    """Without a pointer, only registered versions are fedlake's: a lake's own sub-folder named
    like a version is data, not an orphan."""
    import pyarrow.parquet as pq

    for folder in ("legacy", "legacy/v-2020"):
        lake.fs.create_dir(posixpath.join(lake.base, folder), recursive=True)
        pq.write_table(FIRST, posixpath.join(lake.base, folder, "part.parquet"), filesystem=lake.fs)
    lake.killed_write()
    assert lake.versions("big") and lake.registrations("big")
    connector = lake.connector()
    assert not lake.versions("big") and not lake.registrations("big")
    assert lake.versions("legacy") == {"v-2020"}
    assert connector.list_tables() == ["legacy"] and connector.row_count("legacy") == 1000
