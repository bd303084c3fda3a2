"""What secure aggregation costs per federated round, against plain FedAvg, in one run.

    .venv/bin/python bench/secure_aggregation.py --scale 0.25 --rounds 3
    .venv/bin/python bench/secure_aggregation.py --encoder minilm-lora --max-samples 64 --rounds 2 --plain-twice

Seeds the demo bank into a fresh local deployment, then trains the same AML model through the
silo agents twice, plain and under secure aggregation (same seeds, same rounds), and prints per
round: wall seconds, bytes both ways (every stage's requests and answers as JSON), the seconds of
each secure-aggregation stage and of the masking inside the agents, and how far the two models
are apart (the masks cancel exactly; what remains is fixed-point rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.learning_agents import seeded_agents  # noqa: E402
from fedlake.learning.aggregate import FedAvg  # noqa: E402
from fedlake.learning.coordinator import FederatedTrainer  # noqa: E402
from fedlake.learning.models import aml_spec  # noqa: E402
from fedlake.learning.secagg import SecAggConfig  # noqa: E402
from fedlake.learning.secagg.ring import Layout  # noqa: E402
from fedlake.learning.train import TrainConfig  # noqa: E402

warnings.filterwarnings("ignore", message="Secure RNG turned off")


def round_cost(record: dict) -> dict:
    """Seconds and bytes of one round as the coordinator recorded it."""
    secure = record.get("secure_aggregation")
    if secure is None:
        return {"seconds": record["seconds"], "bytes_out": record["bytes_out"], "bytes_in": sum(record["bytes_in"].values())}
    masking = [m.get("mask_seconds", 0.0) for m in record["metrics"].values()]
    return {"seconds": record["seconds"], "bytes_out": secure["bytes_out"], "bytes_in": secure["bytes_in"],
            "stages": secure["seconds"], "agent_mask_seconds_max": max(masking) if masking else 0.0}


def difference(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--encoder", default="ngram", help="ngram or minilm-lora")
    parser.add_argument("--max-samples", type=int, default=0, help="accounts per silo per round (0: all)")
    parser.add_argument("--plain-twice", action="store_true",
                        help="train plain a second time: a model whose local step is not deterministic (MiniLM's dropout) differs by itself")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    with seeded_agents(args.scale, args.seed) as bank:
        silos = list(bank.clients)
        spec = aml_spec("aml_secagg_bench", args.encoder)
        config = TrainConfig(epochs=1, lr=0.01, batch_size=128, max_samples=args.max_samples or None)
        results = {}
        # a warm-up round first, so that neither run pays for the agents building their examples
        runs = [("warm-up", None), ("plain", None), ("secure", SecAggConfig())] + ([("plain again", None)] if args.plain_twice else [])
        for name, secure in runs:
            trainer = FederatedTrainer(bank.clients, spec, FedAvg(), rounds=1 if name == "warm-up" else args.rounds, min_silos=len(silos), round_timeout_s=3600,
                                       checkpoint_dir=bank.home / f"ckpt-{name.replace(' ', '-')}", config=config, secure_aggregation=secure)
            results[name] = trainer.fit()
        plain, secure = ([round_cost(r) for r in results[k].history] for k in ("plain", "secure"))
        gap = difference(results["plain"].weights, results["secure"].weights)
        again = difference(results["plain"].weights, results["plain again"].weights) if args.plain_twice else None
        size = Layout.of(results["plain"].weights).size
        stages = {stage: statistics.median(r["stages"][stage] for r in secure) for stage in secure[0]["stages"]}
        report = {
            "command": " ".join(sys.argv), "scale": args.scale, "encoder": args.encoder, "rounds": args.rounds, "silos": silos,
            "cores": os.cpu_count(), "ring_elements": size,
            "plain": {"seconds": median(plain, "seconds"), "bytes": median(plain, "bytes_out") + median(plain, "bytes_in")},
            "secure": {"seconds": median(secure, "seconds"), "bytes": median(secure, "bytes_out") + median(secure, "bytes_in"),
                       "stage_seconds": stages, "agent_mask_seconds": median(secure, "agent_mask_seconds_max")},
            "max_weight_difference": gap, "max_weight_difference_plain_twice": again,
        }
    p, s = report["plain"], report["secure"]
    print(f"secure aggregation, {args.encoder}, scale {args.scale:g}, {len(silos)} silos, {args.rounds} rounds, "
          f"{size:,} ring elements per update, {os.cpu_count()} cores (medians over rounds)")
    print(f"  plain round:  {p['seconds']:.2f}s, {p['bytes'] / 1e6:.2f} MB both ways")
    print(f"  secure round: {s['seconds']:.2f}s ({s['seconds'] - p['seconds']:+.2f}s, {s['seconds'] / p['seconds']:.2f}x), "
          f"{s['bytes'] / 1e6:.2f} MB both ways ({s['bytes'] / p['bytes']:.2f}x)")
    print("  stages: " + ", ".join(f"{k} {v:.3f}s" for k, v in stages.items())
          + f"; masking inside the slowest agent {s['agent_mask_seconds']:.3f}s (the 'masked input' stage includes local training)")
    print(f"  largest weight difference, secure vs plain: {gap:.2e}"
          + (f"; plain vs plain again (the training's own run-to-run difference): {again:.2e}" if again is not None else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
