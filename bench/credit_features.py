"""The credit-feature workload, five ways, side by side in one run:

  (a) naive ETL: copy every needed table raw into the governed zone, then join there;
  (b) co-located: the same SQL in one DuckDB over all tables, no borders (the compute floor);
  (c) DuckDB's own federation: its postgres extension on eu_core plus the Parquet lakes, one query, no policy;
  (d) fedlake, agents in-process;   (e) fedlake, agents as processes over Flight with TLS on loopback;
  (f) as (d) without semi-join reduction, to show what it saves;
  (g) as (d) with the residual kept at the governed zone, to show what placing it in a silo saves.

    make bench SCALE=5        # 1M transactions

Each variant runs in its own process (so peak memory is its own), after a warm-up run; bytes are
Arrow bytes crossing silo borders; the lower bound is the size of the compliant result.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from assets.governed import credit_features_sql  # noqa: E402
from fedlake.catalog import load_catalog  # noqa: E402
from fedlake.policy.model import load_policy  # noqa: E402
from fedlake.silos import open_silo  # noqa: E402

VARIANTS = {
    "a": "naive ETL (raw copy, then join)",
    "b": "co-located DuckDB (compute floor)",
    "c": "DuckDB federation (postgres ext + Parquet)",
    "d": "fedlake, in-process agents",
    "e": "fedlake, agents over Flight+TLS",
    "f": "fedlake in-process, no semi-join reduction",
    "g": "fedlake in-process, residual at governed",
}
RAW_TABLES = ("customers", "accounts", "transactions")


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    fork and exec, so every variant would report at least the peak of the process that seeded."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_colocated(catalog, home, db) -> int:
    """Copy every table the workload reads into one DuckDB; returns the Arrow bytes copied."""
    copied = 0
    for name, spec in catalog.silos.items():
        db.execute(f"CREATE SCHEMA IF NOT EXISTS {name}")
        with open_silo(spec, "local", home) as silo:
            for table in (*RAW_TABLES, *(("loans",) if "loans" in spec.tables else ())):
                reader = silo.execute(f"SELECT * FROM {table}")
                db.register("incoming", reader)
                db.execute(f"CREATE TABLE {name}.{table} AS SELECT * FROM incoming")
                db.unregister("incoming")
            copied += silo.egress.snapshot()[1]
    return copied


def run_variant(variant: str, home: Path, tls_dir: Path | None, locations: dict[str, str]) -> dict:
    import duckdb

    catalog = load_catalog(REPO / "silos.yaml")
    policy = load_policy(REPO / "policies.yaml", catalog)
    sql = credit_features_sql(catalog, "eu_core")
    result: dict = {}
    if variant in ("a", "b"):
        db = duckdb.connect(config={"autoinstall_known_extensions": False})
        if variant == "b":
            load_colocated(catalog, home, db)
            db.execute(sql).fetch_arrow_table()  # warm-up
        start = time.perf_counter()
        moved = load_colocated(catalog, home, db) if variant == "a" else 0
        table = db.execute(sql).fetch_arrow_table()
        result.update(seconds=time.perf_counter() - start, bytes=moved)
    elif variant == "c":
        import duckdb_extensions

        db = duckdb.connect(config={"autoinstall_known_extensions": False})
        duckdb_extensions.import_extension("postgres", con=db)
        db.execute("LOAD postgres")
        from fedlake.silos.postgres import embedded_dsn

        db.execute(f"ATTACH '{embedded_dsn(home / 'eu_core')}' AS eu_core (TYPE postgres, READ_ONLY)")
        for name in ("us_lake", "sg_lake"):
            spec = catalog.silo(name)
            db.execute(f"CREATE SCHEMA {name}")
            with open_silo(spec, "local", home) as lake:
                for t in RAW_TABLES:
                    files = lake.data_files(t)
                    db.execute(f"CREATE VIEW {name}.{t} AS SELECT * FROM read_parquet({files!r})")
        db.execute(sql).fetch_arrow_table()
        start = time.perf_counter()
        table = db.execute(sql).fetch_arrow_table()
        result.update(seconds=time.perf_counter() - start, bytes=None)
    else:
        from fedlake.agent import FlightAgentClient, client_token, local_agent_client
        from fedlake.query import GOVERNED, Federation
        from fedlake.runtime import settle_heap

        if variant in ("d", "f", "g"):
            clients = {s: local_agent_client(catalog, policy, s, home) for s in catalog.silos}
        else:
            token = client_token(policy, "coordinator", "local", home)
            clients = {s: FlightAgentClient(s, locations[s], token, tls_dir / "ca.pem") for s in catalog.silos}
        federation = Federation(catalog, clients, semijoins=variant != "f", site=GOVERNED if variant == "g" else "auto")
        settle_heap()  # as a Dagster step or a server settles it, once its imports are done
        federation.run(sql, "credit_scoring")
        start = time.perf_counter()
        table, plan = federation.run(sql, "credit_scoring")
        result.update(seconds=time.perf_counter() - start, bytes=plan.bytes_crossing, site=plan.site or GOVERNED)
    result.update(rows=table.num_rows, result_bytes=table.nbytes, peak_rss_mb=peak_rss_mb())
    return result


def start_agents(catalog, home: Path, tls: dict) -> tuple[list[subprocess.Popen], dict[str, str]]:
    processes, locations = [], {}
    for silo in catalog.silos:
        process = subprocess.Popen(
            [sys.executable, "-m", "fedlake.cli", "agent", "serve", "--silo", silo, "--port", "0",
             "--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"])],
            env={**os.environ, "FEDLAKE_HOME": str(home), "FEDLAKE_AGENT_CA": str(tls["ca"])},
            stdout=subprocess.PIPE, text=True, cwd=REPO,
        )
        line = process.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"agent {silo} did not start: {line!r}")
        processes.append(process)
        locations[silo] = line.split()[-1]
    return processes, locations


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=float(os.environ.get("SCALE", 5)))
    parser.add_argument("--variant", choices=sorted(VARIANTS))
    parser.add_argument("--home", type=Path)
    parser.add_argument("--locations", default="{}")
    args = parser.parse_args()

    if args.variant:  # one measurement, in its own process
        print(json.dumps(run_variant(args.variant, args.home, args.home / "tls", json.loads(args.locations))))
        return 0

    from fedlake.agent.tls import make_tls
    from fedlake.synth.seed import seed_demo_bank

    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="credit-bench-", dir=REPO / "bench" / "results"))
    catalog = load_catalog(REPO / "silos.yaml")
    report = seed_demo_bank(catalog, "local", home, args.scale, 42)
    transactions = sum(t["transactions"] for t in report.rows.values())
    tls = make_tls(home / "tls")
    agents, locations = start_agents(catalog, home, tls)
    results = {}
    try:
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--home", str(home), "--locations", json.dumps(locations)],
                capture_output=True, text=True, cwd=REPO, env={**os.environ, "FEDLAKE_HOME": str(home)},
            )
            if out.returncode != 0:
                raise RuntimeError(f"variant {variant} failed:\n{out.stderr[-3000:]}")
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        for process in agents:
            process.terminate()
            process.wait(10)

    floor = results["b"]
    lower_bound = results["d"]["result_bytes"]
    naive = results["a"]["bytes"]
    print(f"credit-feature workload, scale {args.scale:g}: {transactions:,} transactions, "
          f"{results['b']['rows']:,} result rows; {os.cpu_count()} cores")
    print(f"compliant result (lower bound on bytes crossing): {lower_bound:,} bytes; naive ETL copies {naive:,} bytes")
    print(f"{'variant':<46} {'bytes crossing':>15} {'x bound':>8} {'% naive':>8} {'seconds':>8} {'x (b)':>6} {'peak MB':>8} {'x (b)':>6}")
    for variant, label in VARIANTS.items():
        r = results[variant]
        moved = "n/a" if r["bytes"] is None else f"{r['bytes']:,}"
        bound = "" if not r["bytes"] else f"{r['bytes'] / lower_bound:.2f}"
        share = "" if r["bytes"] is None else f"{100 * r['bytes'] / naive:.1f}"
        print(f"({variant}) {label:<42} {moved:>15} {bound:>8} {share:>8} {r['seconds']:>8.2f} "
              f"{r['seconds'] / floor['seconds']:>6.2f} {r['peak_rss_mb']:>8.0f} {r['peak_rss_mb'] / floor['peak_rss_mb']:>6.2f}")
    print("where the residual ran: " + ", ".join(f"({v}) {r['site']}" for v, r in results.items() if "site" in r))
    print("(c) has no borders to count: DuckDB pulls what it scans. (e)'s peak memory is the coordinator's; "
          "each agent process has its own.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
