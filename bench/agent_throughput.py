"""Rows per second out of each silo: read directly, through the in-process agent, and through the
agent as its own process over Flight with TLS on loopback, measured side by side in one run.

    make bench-agent SCALE=5

Seeds the demo bank at SCALE into a fresh local deployment under bench/results/, then streams the
same allowed fragment (and a fragment the gate rewrites) from every silo each way.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedlake.agent import FlightAgentClient, client_token, local_agent_client
from fedlake.agent.tls import make_tls
from fedlake.catalog import load_catalog
from fedlake.policy.model import load_policy
from fedlake.silos import open_silo
from fedlake.synth.seed import seed_demo_bank

REPO = Path(__file__).resolve().parent.parent
FRAGMENTS = {
    "allowed": ("SELECT txn_id, ts, amount, currency, direction, channel FROM transactions", "aml"),
    "rewritten": ("SELECT txn_id, account_id, ts, amount, currency, direction, channel FROM transactions", "credit_scoring"),
}


def drain(reader) -> int:
    return sum(batch.num_rows for batch in reader)


def timed(fn, repeat: int) -> tuple[int, float]:
    best = float("inf")
    rows = 0
    for _ in range(repeat):
        start = time.perf_counter()
        rows = fn()
        best = min(best, time.perf_counter() - start)
    return rows, best


def start_agent(silo: str, home: Path, tls: dict[str, Path]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "fedlake.cli", "agent", "serve", "--silo", silo, "--port", "0",
         "--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"])],
        env={**os.environ, "FEDLAKE_HOME": str(home)}, stdout=subprocess.PIPE, text=True,
    )
    line = process.stdout.readline()
    if "listening on" not in line:
        raise RuntimeError(f"agent {silo} did not start: {line}")
    return process, line.strip().split()[-1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=float(os.environ.get("SCALE", 1)))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="agent-bench-", dir=REPO / "bench" / "results"))
    catalog = load_catalog(REPO / "silos.yaml")
    policy = load_policy(REPO / "policies.yaml", catalog)
    report = seed_demo_bank(catalog, "local", home, args.scale, 42)
    tls = make_tls(home / "tls")
    token = client_token(policy, "coordinator", "local", home)
    print(f"agent throughput, scale {args.scale:g} (seeded in {report.seconds:.1f}s), best of {args.repeat}, "
          f"{os.cpu_count()} cores")
    print(f"{'silo':<8} {'fragment':<10} {'rows':>9} {'direct rows/s':>14} {'in-process':>12} {'ratio':>6} {'Flight+TLS':>12} {'ratio':>6}")
    for silo, spec in catalog.silos.items():
        process, location = start_agent(silo, home, tls)
        try:
            direct = open_silo(spec, "local", home)
            local = local_agent_client(catalog, policy, silo, home)
            remote = FlightAgentClient(silo, location, token, tls["ca"])
            for name, (sql, purpose) in FRAGMENTS.items():
                destination = catalog.governed_region  # the coordinator's region: its identity decides
                rows, t_direct = timed(lambda: drain(direct.execute(sql)), args.repeat)
                _, t_local = timed(lambda: drain(local.query(sql, purpose, destination)), args.repeat)
                _, t_remote = timed(lambda: drain(remote.query(sql, purpose, destination)), args.repeat)
                print(f"{silo:<8} {name:<10} {rows:>9,} {rows / t_direct:>14,.0f} {rows / t_local:>12,.0f} "
                      f"{t_direct / t_local:>6.2f} {rows / t_remote:>12,.0f} {t_direct / t_remote:>6.2f}")
            for c in (direct, local, remote):
                c.close()
        finally:
            process.terminate()
            process.wait(10)
    print("ratio = rows/s through the agent / rows/s reading the silo directly (1.00 = no overhead)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
