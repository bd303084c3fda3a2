"""How long a trivial federated query takes from a cold `fedlake query` process: the whole process,
start to exit (interpreter, imports, catalog and policy, the agent, the query), median of several,
next to a bare `python -c pass` for the interpreter's own share.

    python bench/cli_latency.py [--repeat 5]

Seeds a small demo bank (scale 0.05) into a fresh local deployment under bench/results/ first; the
embedded PostgreSQL is started by the seeding, so a run measures the CLI, not the server's start.
(`fedlake serve`'s latency is bench/serve_latency.py's.)
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

QUERY = "SELECT count(*) AS n FROM sg_lake.customers"
PURPOSE = "analytics"


def wall(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{(done.stderr or done.stdout)[-2000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from fedlake.catalog import load_catalog
    from fedlake.synth.seed import seed_demo_bank

    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="cli-latency-", dir=REPO / "bench" / "results"))
    seed_demo_bank(load_catalog(REPO / "silos.yaml"), "local", home, 0.05, 42)
    env = {**os.environ, "FEDLAKE_HOME": str(home), "FEDLAKE_SILOS": str(REPO / "silos.yaml")}
    env.pop("FEDLAKE_LEDGER", None)
    fedlake = [sys.executable, "-m", "fedlake.cli", "query", QUERY, "--purpose", PURPOSE]  # this checkout's fedlake
    wall(fedlake, env)  # the first run compiles bytecode and warms the page cache: not counted
    cli = [wall(fedlake, env) for _ in range(args.repeat)]
    bare = [wall([sys.executable, "-c", "pass"], env) for _ in range(args.repeat)]
    print(f"cold `fedlake query \"{QUERY}\"`, {args.repeat} runs, {os.cpu_count()} cores:")
    print(f"  median {statistics.median(cli):.2f} s (min {min(cli):.2f}, max {max(cli):.2f}); "
          f"a bare interpreter start: median {statistics.median(bare):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
