"""Real services on loopback for the tests: a PostgreSQL server over TCP, moto's S3 server, agents."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from fedlake.silos.postgres import MADE_SCHEMA, ensure_roles
from fedlake.stack.postgres_server import restart_postgres, start_postgres, stop_postgres
from fedlake.stack.processes import free_port, wait_for_port
from fedlake.stack.keys import signing_key_files
from fedlake.stack.s3_server import create_bucket, start_s3

__all__ = [
    "agent_process", "create_bucket", "free_port", "postgres_server", "restart_postgres", "s3_server",
    "silo_role_dsns", "stop_process", "wait_for_port",
]


@contextmanager
def postgres_server(root: Path) -> Iterator[str]:
    """A PostgreSQL server over loopback TCP with password authentication; yields the superuser's DSN."""
    pgdata = root / "pgdata"
    dsn = start_postgres(pgdata, secrets.token_urlsafe(18))
    try:
        yield dsn
    finally:
        stop_postgres(pgdata)


def silo_role_dsns(admin_dsn: str, silo: str, schema: str = "public", writer_schema: str = MADE_SCHEMA) -> tuple[str, str]:
    """The reader and writer roles of one silo on the test server, with fresh passwords, set up as
    the data owner would; returns their DSNs (reader, writer)."""
    params = conninfo_to_dict(admin_dsn)
    reader, writer = f"{silo}_reader", f"{silo}_writer"
    passwords = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    ensure_roles(admin_dsn, schema, reader, writer, writer_schema, *passwords)
    where = f"{params['host']}:{params['port']}/{params['dbname']}"
    return f"postgresql://{reader}:{passwords[0]}@{where}", f"postgresql://{writer}:{passwords[1]}@{where}"


@contextmanager
def s3_server() -> Iterator[str]:
    """moto in server mode: a real S3 API over HTTP on loopback; yields its endpoint URL."""
    endpoint, process = start_s3()
    try:
        yield endpoint
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def agent_process(silo: str, env: dict[str, str], tls: dict[str, Path], log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`fedlake agent serve` for one silo, as its own process over TLS on loopback; yields its location."""
    port = free_port()
    command = [
        sys.executable, "-m", "fedlake.cli", "--deployment", "prod", "agent", "serve", "--silo", silo,
        "--host", "127.0.0.1", "--port", str(port), "--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"]),
    ]
    # the agent reads and materializes as its silo's roles: the data owner's credentials stay behind
    env = {k: v for k, v in {**os.environ, **env}.items() if not k.endswith("_OWNER_DSN")}
    if "FEDLAKE_SIGNING_KEY" not in env:  # its own chain's key, the public half where `public_keys(home)` reads
        keys = Path(env["FEDLAKE_HOME"]) / "keys"
        env["FEDLAKE_SIGNING_KEY"] = str(signing_key_files(keys, [silo], public=keys)[silo])
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(port, timeout=60)
        except RuntimeError:
            raise RuntimeError(f"agent {silo} did not start:\n{log.read_text()}") from None
        yield f"grpc+tls://127.0.0.1:{port}", process
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
