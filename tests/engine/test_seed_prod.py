"""Seeding a prod lake whose bucket does not exist: one line naming silo, bucket and endpoint."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from tests.conftest import REPO


def test_seeding_into_a_missing_bucket_is_one_line_and_creates_nothing(s3_endpoint, tmp_path):
    import boto3

    declared = yaml.safe_load((REPO / "silos.yaml").read_text())
    # the other two silos as plain folders, so that only the bucket is missing
    for name in ("eu_core", "sg_lake"):
        declared["silos"][name] |= {"kind": "parquet", "connection": {"prod": {"path": str(tmp_path / name)}}}
    (tmp_path / "silos.yaml").write_text(yaml.safe_dump(declared))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDLAKE_", "US_LAKE", "AWS_"))}
    env.update({"US_LAKE_BUCKET": "fedlake-nobody-made-me", "US_LAKE_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "k",
                "AWS_SECRET_ACCESS_KEY": "s", "FEDLAKE_HOME": str(tmp_path / "home")})
    done = subprocess.run(
        [sys.executable, "-m", "fedlake.cli", "--silos", str(tmp_path / "silos.yaml"), "--deployment", "prod", "seed", "--scale", "0.01"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr and "\x1b[" not in done.stderr
    assert lines[0] == (f"fedlake: error: silo us_lake: bucket 'fedlake-nobody-made-me' does not exist at {s3_endpoint}; "
                        "create it first (fedlake never creates buckets)")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1")
    assert "fedlake-nobody-made-me" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
