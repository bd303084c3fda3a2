"""moto in server mode: a real S3 API over HTTP on loopback, for tests and the one-machine deployment.
Its objects live in memory: they last as long as the process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fedlake.stack.processes import free_port, spawn, wait_for_port


def start_s3(log: Path | None = None, port: int | None = None) -> tuple[str, subprocess.Popen]:
    """Start the server; returns its endpoint URL and process."""
    port = port or free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
    if log is None:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    else:
        process = spawn(command, env, log)
    wait_for_port(port, process=process)
    return f"http://127.0.0.1:{port}", process


def create_bucket(endpoint_url: str, bucket: str, key: str, secret: str) -> None:
    import boto3

    client = boto3.client(
        "s3", endpoint_url=endpoint_url, aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1"
    )
    client.create_bucket(Bucket=bucket)
