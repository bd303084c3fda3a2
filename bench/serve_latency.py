"""Latency of a trivial query through `fedlake serve`, from one ADBC Flight SQL connection, next to
the same query through the in-process Federation (what the server wraps), measured in one run.

    .venv/bin/python bench/serve_latency.py [--scale 0.05] [--repeat 200] [--identity analyst]

Seeds the demo bank into a fresh local deployment (a temporary folder), starts `fedlake serve` as
its own process with TLS on loopback, and times cursor.execute + fetch_arrow_table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
from adbc_driver_flightsql import DatabaseOptions

from fedlake.agent import client_token, local_agent_client
from fedlake.agent.tls import make_tls
from fedlake.catalog import load_catalog
from fedlake.policy.model import load_policy
from fedlake.query import GOVERNED, Federation
from fedlake.synth.seed import seed_demo_bank

REPO = Path(__file__).resolve().parent.parent
SQL = "SELECT count(*) AS n FROM sg_lake.customers"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(run, repeat: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return samples


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"fedlake serve exited:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"fedlake serve did not listen within {timeout}s:\n{log.read_text()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--identity", default="analyst")
    parser.add_argument("--purpose", default="analytics")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fedlake-serve-bench-"))
    home = work / "home"
    catalog = load_catalog(REPO / "silos.yaml")
    policy = load_policy(REPO / "policies.yaml", catalog)
    seed_demo_bank(catalog, "local", home, args.scale, 42)
    tls = make_tls(work / "tls")
    port = free_port()
    log = work / "serve.log"
    env = {**os.environ, "FEDLAKE_HOME": str(home)}
    command = [sys.executable, "-m", "fedlake.cli", "--deployment", "local", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"])]
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(port, process, log)
        token = client_token(policy, args.identity, "local", home)
        options = {
            DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}",
            DatabaseOptions.TLS_ROOT_CERTS.value: tls["ca"].read_text(),
            f"{DatabaseOptions.RPC_CALL_HEADER_PREFIX.value}x-fedlake-purpose": args.purpose,
        }
        with flightsql.connect(f"grpc+tls://127.0.0.1:{port}", db_kwargs=options, autocommit=True) as connection:
            cursor = connection.cursor()

            def through_serve() -> None:
                cursor.execute(SQL)
                cursor.fetch_arrow_table()

            served = timed(through_serve, args.repeat)
            cursor.close()
    finally:
        process.terminate()
        process.wait(10)

    clients = {s: local_agent_client(catalog, policy, s, home, identity=args.identity) for s in catalog.silos}
    coordinates = "coordinate" in policy.clients[args.identity].roles
    federation = Federation(catalog, clients, site="auto" if coordinates else GOVERNED, semijoins=coordinates)
    in_process = timed(lambda: federation.run(SQL, args.purpose), args.repeat)
    for client in clients.values():
        client.close()

    print(f"{SQL!r} as {args.identity} for {args.purpose}, scale {args.scale:g}, {args.repeat} repetitions each")
    print(f"{'':<38}{'p50 ms':>9}{'p99 ms':>9}")
    for name, samples in [("fedlake serve (ADBC, one connection)", served), ("in-process Federation.run", in_process)]:
        print(f"{name:<38}{1000 * statistics.median(samples):>9.1f}{1000 * percentile(samples, 0.99):>9.1f}")
    print(f"serve / in-process at p50: {statistics.median(served) / statistics.median(in_process):.2f}x "
          "(the server witnesses the agents' chain heads after the result has gone; Federation.run before it returns)")


if __name__ == "__main__":
    main()
