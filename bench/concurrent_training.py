"""Several specialised models trained at once through the same silo agents, against one after another.

    .venv/bin/python bench/concurrent_training.py --scale 0.25 --rounds 3
    .venv/bin/python bench/concurrent_training.py --scale 1 --rounds 5 --json bench/results/concurrent.json

Seeds the demo bank into a fresh local deployment, then trains these models, first one after
another, then all at once (one thread each, as Dagster's multiprocess executor would run their
assets side by side), and prints each one's wall time and the total:

- the shared AML model, FedAvg across every silo under secure aggregation;
- one memo-screening model per region, trained inside that region's silo alone;
- the shared credit model on the compliant cross-silo features (built once, beforehand, through
  the federated planner).

Each model must come out the same both ways (the trainings keep apart: their own secure-
aggregation sessions, example sets and checkpoints); the largest weight difference is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assets.governed import credit_features_sql  # noqa: E402  (the SQL of the governed asset)
from bench.learning_agents import seeded_agents  # noqa: E402
from fedlake.learning.aggregate import FedAvg  # noqa: E402
from fedlake.learning.coordinator import FederatedTrainer  # noqa: E402
from fedlake.learning.credit import DEFAULT_CONFIG, train_credit  # noqa: E402
from fedlake.learning.models import ModelSpec  # noqa: E402
from fedlake.learning.train import TrainConfig  # noqa: E402
from fedlake.query import Federation  # noqa: E402

warnings.filterwarnings("ignore", message="Secure RNG turned off")

Job = Callable[[Path], dict]


def federated_jobs(bank, rounds: int) -> dict[str, Job]:
    """The shared AML model across every silo, and one memo-screening model per region's silo."""
    config = TrainConfig(epochs=1, lr=0.01, batch_size=256)

    def federated(name: str, silos: list[str], spec: ModelSpec) -> Job:
        def run(folder: Path) -> dict:
            trainer = FederatedTrainer({s: bank.clients[s] for s in silos}, spec, FedAvg(), rounds=rounds, min_silos=len(silos),
                                       round_timeout_s=3600, checkpoint_dir=folder / name, config=config)
            return trainer.fit().weights
        return run

    out = {"aml_shared": federated("aml_shared", list(bank.clients), ModelSpec("aml_shared", "aml", {}))}
    for silo, spec in bank.catalog.silos.items():
        name = f"memo_screen_{spec.region.lower()}"
        out[name] = federated(name, [silo], ModelSpec(name, "aml", {"buckets": 2**12}))
    return out


def credit_job(bank, epochs: int) -> Job:
    """The shared credit model, on features built once through the federated planner."""
    features, _ = Federation(bank.catalog, bank.clients).run(credit_features_sql(bank.catalog, "eu_core"), "credit_scoring")
    config = TrainConfig(**{**DEFAULT_CONFIG.to_dict(), "epochs": epochs})
    return lambda folder: train_credit(features, config=config).weights


def timed(job: Job, folder: Path) -> tuple[dict, float]:
    started = time.perf_counter()
    weights = job(folder)
    return weights, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--credit-epochs", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    with seeded_agents(args.scale, args.seed) as bank:
        for job in federated_jobs(bank, 1).values():  # warm-up: the agents build each model's examples once
            job(bank.home / "warm-up")
        work = {**federated_jobs(bank, args.rounds), "credit_scoring": credit_job(bank, args.credit_epochs)}
        started = time.perf_counter()
        sequential = {name: timed(job, bank.home / "sequential") for name, job in work.items()}
        sequential_s = time.perf_counter() - started
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(work)) as pool:
            futures = {name: pool.submit(timed, job, bank.home / "concurrent") for name, job in work.items()}
            concurrent = {name: future.result() for name, future in futures.items()}
        concurrent_s = time.perf_counter() - started
    gap = {name: max(float(np.max(np.abs(np.asarray(sequential[name][0][k], dtype=np.float64) - concurrent[name][0][k])))
                     for k in sequential[name][0]) for name in work}
    print(f"{len(work)} specialised models, scale {args.scale:g}, {args.rounds} federated rounds, "
          f"credit {args.credit_epochs} epochs, {os.cpu_count()} cores")
    print(f"{'model':<22} {'alone s':>8} {'side by side s':>15} {'max |w diff|':>13}")
    for name in work:
        print(f"{name:<22} {sequential[name][1]:>8.2f} {concurrent[name][1]:>15.2f} {gap[name]:>13.1e}")
    print(f"{'total wall':<22} {sequential_s:>8.2f} {concurrent_s:>15.2f}   ({sequential_s / concurrent_s:.2f}x)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": " ".join(sys.argv), "scale": args.scale, "rounds": args.rounds, "cores": os.cpu_count(),
            "sequential_s": sequential_s, "concurrent_s": concurrent_s,
            "models": {n: {"alone_s": sequential[n][1], "side_by_side_s": concurrent[n][1], "max_weight_difference": gap[n]} for n in work},
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
