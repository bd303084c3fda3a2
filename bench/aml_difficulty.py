"""How hard the demo bank's AML problem is: pooled (the ceiling), FedAvg, each silo alone, and
DP-FedAvg, in one process, in minutes.

    .venv/bin/python bench/aml_difficulty.py --scale 1 --seed 42 --rounds 15
    .venv/bin/python bench/aml_difficulty.py --scale 1 --dp 1.3 --dp-batch 256 --dp-optimizer sgd --dp-lr 0.5

The calibration tool for fedlake.synth.laundering's knobs. The bank is generated in memory, each
region's examples are built by the same aggregate SQL the silo agents run (DuckDB over the
region's tables) and trained with the same local step and FedAvg, but without agents, secure
aggregation or a ledger: the through-the-agents comparison is bench/federated_learning.py. Every
model is scored on every account of every region against the full ground truth (AUC and PR-AUC;
with 0.4 % of accounts laundering, PR-AUC is the one that separates the approaches). DP-FedAvg is
local DP-SGD in every silo (sample-level: one account is one example), epsilon per silo from the
RDP accountant at delta 1e-5.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fedlake.learning import weights as wire  # noqa: E402
from fedlake.learning.aggregate import fedavg  # noqa: E402
from fedlake.learning.data import AMLData, aml_examples, held_out_mask  # noqa: E402
from fedlake.learning.metrics import evaluate  # noqa: E402
from fedlake.learning.models import ModelSpec  # noqa: E402
from fedlake.learning.train import DPConfig, TrainConfig, dp_epsilon, predict, train_local  # noqa: E402
from fedlake.synth import bank  # noqa: E402
from fedlake.synth.default_model import REGION_COUNTRIES  # noqa: E402

warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing")
DELTA = 1e-5


class _Tables:
    """A region's tables as a connector that runs the silo's aggregate SQL (DuckDB)."""

    def __init__(self, tables: dict[str, pa.Table]):
        self.con = duckdb.connect()
        for name, table in tables.items():
            self.con.register(name, table)

    def execute(self, sql: str) -> pa.RecordBatchReader:
        result = self.con.execute(sql).arrow()
        return result if isinstance(result, pa.RecordBatchReader) else result.to_reader()


def examples(scale: float, seed: int, buckets: int) -> tuple[dict[str, AMLData], np.ndarray, np.ndarray]:
    """Per region: its accounts as examples; over all of them: the full truth and the region."""
    blocks = list(bank.generate(scale, seed))
    data = {}
    for region in bank.REGIONS:
        tables = {t: pa.concat_tables([b.silo_tables[region][t] for b in blocks]) for t in ("transactions", "accounts", "aml_cases")}
        data[region] = aml_examples(_Tables(tables), buckets, tuple(REGION_COUNTRIES[region]), fingerprint=region)
    laundering = set(pa.concat_tables([b.truth["aml_pattern_accounts"] for b in blocks]).column("account_id").to_pylist())
    accounts = np.concatenate([d.account_ids for d in data.values()])
    truth = np.fromiter((a in laundering for a in accounts), dtype=float, count=len(accounts))
    region = np.concatenate([[r] * len(d) for r, d in data.items()])
    return data, truth, region


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=15, help="federated rounds, pooled and local epochs")
    parser.add_argument("--buckets", type=int, default=2**14)
    parser.add_argument("--dp", type=float, default=0.0, help="> 0: run DP-FedAvg only, with this noise multiplier")
    parser.add_argument("--dp-clip", type=float, default=1.0)
    parser.add_argument("--dp-batch", type=int, default=256)
    parser.add_argument("--dp-lr", type=float, default=0.5)
    parser.add_argument("--dp-optimizer", default="sgd")
    parser.add_argument("--dp-buckets", type=int, default=2**12)
    parser.add_argument("--dp-text-dim", type=int, default=16)
    parser.add_argument("--dp-train-text", action="store_true", help="also train the n-gram embedding under DP (default: keep it at its random start)")
    parser.add_argument("--dp-average-last", type=int, default=5,
                        help="also score the mean of the last N rounds' global models (post-processing: no privacy cost)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    buckets = args.dp_buckets if args.dp else args.buckets
    data, truth, region = examples(args.scale, args.seed, buckets)
    everything = AMLData.concat(list(data.values()))
    train = {r: d.subset(~held_out_mask(d.account_ids)) for r, d in data.items()}
    print(f"scale {args.scale:g}, seed {args.seed}: " + ", ".join(
        f"{r} {len(d):,} accounts, {int(truth[region == r].sum())} laundering, {int(d.labels.sum())} confirmed" for r, d in data.items())
        + f" ({time.perf_counter() - t0:.0f}s to build)")

    def score(model) -> dict[str, dict]:
        scores = predict(model, everything)
        return {"all": evaluate(scores, truth), **{r: evaluate(scores[region == r], truth[region == r]) for r in data}}

    def line(name: str, m: dict) -> str:
        per_region = " ".join(f"{r} {m[r]['auc']:.3f}/{m[r]['pr_auc']:.3f}" for r in data)
        return f"{name:<26} AUC {m['all']['auc']:.4f}  PR-AUC {m['all']['pr_auc']:.4f}   by region (AUC/PR-AUC): {per_region}"

    if args.dp:
        spec = ModelSpec("aml", "aml", {"buckets": buckets, "text_dim": args.dp_text_dim, "train_text": args.dp_train_text})
        dp = DPConfig(noise_multiplier=args.dp, max_grad_norm=args.dp_clip, delta=DELTA)
        config = TrainConfig(lr=args.dp_lr, batch_size=args.dp_batch, optimizer=args.dp_optimizer, dp=dp)
        name = f"DP-FedAvg sigma {args.dp:g}"
    else:
        spec = ModelSpec("aml", "aml", {"buckets": buckets})
        config = TrainConfig(lr=0.01, batch_size=256)
        name = "FedAvg"

    def central(parts: list[AMLData]):
        pooled = AMLData.concat(parts)
        model = spec.build(seed=0)
        for epoch in range(args.rounds):
            train_local(model, pooled, replace(config, seed=epoch))
        return model

    if not args.dp:
        t1 = time.perf_counter()
        print(line("pooled (ceiling)", score(central(list(train.values())))) + f"  ({time.perf_counter() - t1:.0f}s)")
        alone = {r: score(central([train[r]])) for r in data}
        for r, m in alone.items():
            print(line(f"{r} silo alone", m))
        aucs, prs = [m["all"]["auc"] for m in alone.values()], [m["all"]["pr_auc"] for m in alone.values()]
        print(f"{'local-only mean / worst':<26} AUC {np.mean(aucs):.4f} / {min(aucs):.4f}  PR-AUC {np.mean(prs):.4f} / {min(prs):.4f}")

    t1 = time.perf_counter()
    weights = wire.model_weights(spec.build(seed=0))
    history: dict[str, list] = {r: [] for r in data}
    recent: list = []
    for round_ in range(1, args.rounds + 1):
        updates = []
        for r in data:
            local = train_local(wire.load_into(spec.build(), weights), train[r], replace(config, seed=round_),
                                dp_history=history[r])
            if local.dp_record:
                history[r].append(local.dp_record)
            updates.append((wire.to_numpy(local.state), local.n_samples))
        weights = fedavg(updates)
        recent = [*recent, weights][-max(args.dp_average_last, 1):]
        if args.dp and (round_ % 5 == 0 or round_ == args.rounds):
            epsilon = ", ".join(f"{r} {dp_epsilon(history[r], DELTA):.2f}" for r in data)
            print(line(f"{name}, round {round_}", score(wire.load_into(spec.build(), weights))) + f"  epsilon {epsilon}")
    if not args.dp:
        print(line(f"{name} ({args.rounds} rounds)", score(wire.load_into(spec.build(), weights))) + f"  ({time.perf_counter() - t1:.0f}s)")
    else:
        averaged = fedavg([(w, 1) for w in recent])
        print(line(f"mean of last {len(recent)} rounds", score(wire.load_into(spec.build(), averaged))))
        print(f"  DP-SGD: clip {args.dp_clip:g}, batch {args.dp_batch}, {args.dp_optimizer} lr {args.dp_lr:g}, {buckets} buckets x "
              f"{args.dp_text_dim} ({'trained' if args.dp_train_text else 'fixed'}), delta {DELTA:g}; sample-level (one account "
              "one example), RDP accountant per silo")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
