"""Cost curves as premises grow: planning, the credit workload and one federated training round,
for K = 3, 6 and 12 regional silos of mixed kinds holding the same bank.

    make bench-scaleout SCALE=0.2          # K=3,6,12 by default; KS="3 6 12 16" for others

For each K a silos.yaml is generated (`fedlake seed --silos K` does the same) and seeded at the same
scale and seed: the same customers, accounts and transactions, spread over more premises. Each K
runs in its own process, agents in-process (no network: what is measured is the coordinator's and
the agents' work). Figures are medians of --repeat runs after a warm-up. Bytes are Arrow bytes
crossing silo borders (the planner's count); their lower bound is the compliant result, the credit
features table the governed zone receives. A training round's bytes are the model sent out plus
the masked updates that come back.

Goals (issue 13): planning and a training round grow at most linearly in K, and bytes crossing
stay within 1.2x the compliant result at every K.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BYTES_GOAL = 1.2


def measure(k: int, scale: float, seed: int, repeat: int, home: Path) -> dict:
    """Seed a K-silo bank under `home` and measure it; runs in its own process."""
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    from assets.governed import credit_features_sql
    from fedlake.agent import local_agent_client
    from fedlake.catalog import load_catalog
    from fedlake.learning.agent_actions import register_learning_actions
    from fedlake.learning.aggregate import FedAvg
    from fedlake.learning.coordinator import FederatedTrainer
    from fedlake.learning.models import ModelSpec
    from fedlake.learning.train import TrainConfig
    from fedlake.policy.model import load_policy
    from fedlake.query import Federation
    from fedlake.runtime import settle_heap
    from fedlake.synth.regional_catalog import write_regional_catalog
    from fedlake.synth.seed import seed_demo_bank

    path = write_regional_catalog(REPO / "silos.yaml", k, home / "silos.yaml")
    catalog = load_catalog(path)
    policy = load_policy(path.with_name("policies.yaml"), catalog)
    report = seed_demo_bank(catalog, "local", home, scale, seed)
    lender = next(name for name, spec in catalog.silos.items() if "loans" in spec.tables)
    sql = credit_features_sql(catalog, lender)
    clients = {silo: local_agent_client(catalog, policy, silo, home) for silo in catalog.silos}
    federation = Federation(catalog, clients)
    settle_heap()

    federation.plan(sql, "credit_scoring")
    planning = []
    for _ in range(repeat):
        started = time.perf_counter()
        federation.plan(sql, "credit_scoring")
        planning.append(time.perf_counter() - started)

    federation.run(sql, "credit_scoring")
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        table, plan = federation.run(sql, "credit_scoring")
        runs.append((time.perf_counter() - started, plan.bytes_crossing, table.nbytes, table.num_rows))

    for client in clients.values():
        register_learning_actions(client.agent)
    spec = ModelSpec("aml_model", "aml", {"buckets": 2**14})
    trainer = FederatedTrainer(
        clients, spec, FedAvg(), rounds=repeat + 1, min_silos=len(clients), round_timeout_s=3600,
        checkpoint_dir=home / "checkpoints", config=TrainConfig(epochs=1, lr=0.01, batch_size=256),
    )
    history = trainer.fit().history[1:]  # the first round also builds each silo's examples

    kinds = [spec.kind for spec in catalog.silos.values()]
    median = statistics.median
    return {
        "k": k,
        "kinds": {kind: kinds.count(kind) for kind in sorted(set(kinds))},
        "rows": {t: sum(r.get(t, 0) for r in report.rows.values()) for t in ("customers", "accounts", "transactions")},
        "largest_silo_transactions": max(r["transactions"] for r in report.rows.values()),
        "seed_s": report.seconds,
        "plan_s": median(planning),
        "credit_s": median(r[0] for r in runs),
        "credit_bytes": int(median(r[1] for r in runs)),
        "result_bytes": runs[0][2],
        "result_rows": runs[0][3],
        "round_s": median(r["seconds"] for r in history),
        "round_slowest_silo_s": median(max(r["silo_seconds"].values()) for r in history),
        "round_bytes": int(median(r["bytes_out"] + sum(r["bytes_in"].values()) for r in history)),
    }


def report(results: list[dict], scale: float) -> list[str]:
    base = results[0]
    lines = [
        f"scale-out, scale {scale:g}: {base['rows']['transactions']:,} transactions and {base['rows']['customers']:,} "
        f"customer records at every K; {base['result_rows']:,} credit-feature rows; {os.cpu_count()} cores, agents in-process",
        f"{'K':>3} {'kinds':<30} {'plan ms':>8} {'x':>5} {'credit s':>9} {'x':>5} {'bytes crossing':>15} {'x result':>9} "
        f"{'round s':>8} {'x':>5} {'round bytes':>12} {'x':>5}",
    ]
    for r in results:
        kinds = ", ".join(f"{n} {kind}" for kind, n in r["kinds"].items())
        lines.append(
            f"{r['k']:>3} {kinds:<30} {1000 * r['plan_s']:>8.0f} {r['plan_s'] / base['plan_s']:>5.2f} "
            f"{r['credit_s']:>9.2f} {r['credit_s'] / base['credit_s']:>5.2f} {r['credit_bytes']:>15,} "
            f"{r['credit_bytes'] / r['result_bytes']:>9.2f} {r['round_s']:>8.2f} {r['round_s'] / base['round_s']:>5.2f} "
            f"{r['round_bytes']:>12,} {r['round_bytes'] / base['round_bytes']:>5.2f}"
        )
    last = results[-1]
    linear = last["k"] / base["k"]
    lines.append(f"x: growth against K={base['k']}; linear growth to K={last['k']} would be x{linear:.2f}")
    for label, key in (("planning", "plan_s"), ("a training round", "round_s")):
        growth = last[key] / base[key]
        verdict = "met" if growth <= linear else "NOT met"
        lines.append(f"goal: {label} grows at most linearly in K: x{growth:.2f} for x{linear:.2f} more silos, {verdict}")
    worst = max(r["credit_bytes"] / r["result_bytes"] for r in results)
    verdict = "met" if worst <= BYTES_GOAL else "NOT met"
    lines.append(f"goal: bytes crossing within {BYTES_GOAL}x the compliant result at every K: at most {worst:.2f}x, {verdict}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=float(os.environ.get("SCALE", 0.2)))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--ks", default=os.environ.get("KS", "3 6 12"), help="silo counts, e.g. '3 6 12'")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs of each kind per K, after a warm-up")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "scaleout.json")
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:  # one K, in its own process
        print(json.dumps(measure(args.measure, args.scale, args.seed, args.repeat, args.home)))
        return 0

    ks = [int(k) for k in args.ks.split()]
    results = []
    for k in ks:
        home = Path(tempfile.mkdtemp(prefix=f"scaleout-{k}-"))
        try:
            out = subprocess.run(
                [sys.executable, __file__, "--measure", str(k), "--home", str(home), "--scale", str(args.scale),
                 "--seed", str(args.seed), "--repeat", str(args.repeat)],
                capture_output=True, text=True, cwd=REPO, env={**os.environ, "FEDLAKE_HOME": str(home)},
            )
            if out.returncode != 0:
                print(f"K={k} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
                return 1
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"K={k}: seeded in {results[-1]['seed_s']:.1f}s, measured", flush=True)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    lines = report(results, args.scale)
    print("\n".join(lines))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": " ".join(sys.argv), "scale": args.scale, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
