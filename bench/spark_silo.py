"""The credit-feature workload with us_lake's fragments on Spark (`engine: spark`, local[N]) against
the same lake on its DuckDB, side by side in one run:

    make bench-spark SCALE=5        # 1M transactions

Each engine runs in its own process, fedlake with in-process agents, after a warm-up run (the
Spark process's first run, JVM start and JIT included, is reported apart). Both must return the
same rows. Also reported: what `engine: spark` costs to install (the pyspark package and its
jars; the Java runtime comes from Debian) and to start (the JVM and the driver). Local Spark on
a few cores is not expected to win: what is measured is that the path is real and what it costs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.credit_features import peak_rss_mb  # noqa: E402
from assets.governed import credit_features_sql  # noqa: E402
from fedlake.catalog import load_catalog  # noqa: E402
from fedlake.policy.model import load_policy  # noqa: E402

SPARK_SILO = "us_lake"
ENGINES = ("duckdb", "spark")


def catalog_for(engine: str, home: Path, master: str) -> Path:
    """silos.yaml as it is, or with us_lake's local agent on Spark."""
    raw = yaml.safe_load((REPO / "silos.yaml").read_text())
    if engine == "spark":
        raw["silos"][SPARK_SILO]["connection"]["local"].update({"engine": "spark", "spark_master": master})
    path = home / f"silos-{engine}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def fingerprint(table) -> str:
    """The result's rows, order aside, floats to 9 places: equal results have equal fingerprints."""
    def cell(v):
        return round(v, 9) if isinstance(v, float) else v

    rows = sorted(repr(tuple(cell(v) for v in row.values())) for row in table.to_pylist())
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


def run_engine(engine: str, home: Path, master: str, repeats: int) -> dict:
    from fedlake.agent import local_agent_client
    from fedlake.query import Federation
    from fedlake.runtime import settle_heap
    from fedlake.silos.spark_session import started as spark_started

    catalog = load_catalog(catalog_for(engine, home, master))
    policy = load_policy(REPO / "policies.yaml", catalog)
    sql = credit_features_sql(catalog, "eu_core")
    clients = {s: local_agent_client(catalog, policy, s, home) for s in catalog.silos}
    federation = Federation(catalog, clients)
    settle_heap()
    start = time.perf_counter()
    federation.run(sql, "credit_scoring")
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        table, plan = federation.run(sql, "credit_scoring")
        times.append(time.perf_counter() - start)
    started = spark_started()
    jvm_mb = sum(_peak_mb(child.pid) for child in psutil.Process().children(recursive=True))
    for client in clients.values():
        client.close()
    return {
        "first_seconds": first,
        "seconds": min(times),
        "all_seconds": times,
        "bytes": plan.bytes_crossing,
        "spark_silo_bytes": sum(r.bytes or 0 for r in plan.runs if r.fragment.silo == SPARK_SILO),
        "rows": table.num_rows,
        "fingerprint": fingerprint(table),
        "spark_start_seconds": started.seconds if started else None,
        "peak_rss_mb": peak_rss_mb(),
        "jvm_peak_mb": jvm_mb,
    }


def _peak_mb(pid: int) -> float:
    """A child process's peak resident memory (the Spark driver's JVM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def install_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=float(os.environ.get("SCALE", 5)))
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--engine", choices=ENGINES)
    parser.add_argument("--home", type=Path)
    args = parser.parse_args()

    if args.engine:  # one engine's measurement, in its own process
        print(json.dumps(run_engine(args.engine, args.home, args.master, args.repeats)))
        return 0

    import pyspark

    from fedlake.synth.seed import seed_demo_bank

    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="spark-bench-", dir=REPO / "bench" / "results"))
    report = seed_demo_bank(load_catalog(REPO / "silos.yaml"), "local", home, args.scale, 42)
    transactions = sum(t["transactions"] for t in report.rows.values())
    results = {}
    for engine in ENGINES:
        out = subprocess.run(
            [sys.executable, __file__, "--engine", engine, "--home", str(home), "--master", args.master,
             "--repeats", str(args.repeats)],
            capture_output=True, text=True, cwd=REPO, env={**os.environ, "FEDLAKE_HOME": str(home)},
        )
        if out.returncode != 0:
            raise RuntimeError(f"engine {engine} failed:\n{out.stderr[-3000:]}")
        results[engine] = json.loads(out.stdout.strip().splitlines()[-1])

    duck, spark = results["duckdb"], results["spark"]
    package = Path(pyspark.__file__).parent
    print(f"credit-feature workload, scale {args.scale:g}: {transactions:,} transactions, {duck['rows']:,} result rows; "
          f"{os.cpu_count()} cores, us_lake on {args.master} vs its DuckDB; load average {os.getloadavg()[0]:.1f}")
    print(f"{'us_lake engine':<16} {'first run s':>12} {'best s':>8} {'x duckdb':>9} {'bytes crossing':>15} "
          f"{'us_lake bytes':>14} {'peak MB':>8} {'JVM MB':>7} {'result':>18}")
    for engine, r in results.items():
        print(f"{engine:<16} {r['first_seconds']:>12.2f} {r['seconds']:>8.2f} {r['seconds'] / duck['seconds']:>9.2f} "
              f"{r['bytes']:>15,} {r['spark_silo_bytes']:>14,} {r['peak_rss_mb']:>8.0f} {r['jvm_peak_mb']:>7.0f} {r['fingerprint']:>18}")
    print(f"same rows on both engines: {duck['fingerprint'] == spark['fingerprint'] and duck['rows'] == spark['rows']}")
    print(f"Spark session start (JVM + driver, {args.master}): {spark['spark_start_seconds']:.1f} s; "
          f"pyspark {pyspark.__version__} installed: {install_size(package) / 2**20:.0f} MiB ({package})")
    return 0 if duck["fingerprint"] == spark["fingerprint"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
