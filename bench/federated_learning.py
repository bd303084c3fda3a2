"""Federated learning against its ceiling and its floor, measured side by side in one run.

    .venv/bin/python bench/federated_learning.py --scale 1
    .venv/bin/python bench/federated_learning.py --scale 0.25 --rounds 4 --json bench/results/fl.json

With --json PATH it runs the comparison matrix instead (bench/fl_matrix.py): for the n-gram
baseline and all-MiniLM-L6-v2 with LoRA, each silo alone, FedAvg, FedProx, pooled and DP-SGD
FedAvg, scored against the full truth, with bytes and seconds per round, written to PATH.

Seeds the demo bank at SCALE into a fresh local deployment under bench/results/, then:

- AML: the federated model (FedAvg and FedProx, through the silo agents, only weights crossing)
  against centralised pooled training on the same training accounts (which only this benchmark
  may do: it is the ceiling) and against the EU silo training alone. Each is scored on every
  account of every silo against the FULL ground truth (every planted laundering account, not only
  the cases the investigators confirmed), as the bank's evaluator with direct access to the silos.
  Also: rounds to converge, and the time of a federated round against the local training inside it.
- Credit: the credit model on the compliant cross-silo features (built by the federated planner,
  as the governed asset builds them) against EU-only features and the oracle (true default
  probability), on the same held-out loans.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from assets.governed import credit_features_sql  # noqa: E402  (the SQL of the governed asset)
from fedlake.agent import local_agent_client  # noqa: E402
from fedlake.catalog import load_catalog  # noqa: E402
from fedlake.learning import weights as wire  # noqa: E402
from fedlake.learning.agent_actions import register_learning_actions  # noqa: E402
from fedlake.learning.aggregate import FedAvg, FedProx  # noqa: E402
from fedlake.learning.coordinator import FederatedTrainer  # noqa: E402
from fedlake.learning.credit import DEFAULT_CONFIG, credit_comparison  # noqa: E402
from fedlake.learning.data import AMLData, aml_examples, held_out_mask  # noqa: E402
from fedlake.learning.metrics import evaluate  # noqa: E402
from fedlake.learning.models import ModelSpec  # noqa: E402
from fedlake.learning.train import DPConfig, TrainConfig, predict, train_local  # noqa: E402
from fedlake.policy.model import load_policy  # noqa: E402
from fedlake.query import Federation  # noqa: E402
from fedlake.synth.seed import seed_demo_bank  # noqa: E402
from fedlake.silos import open_silo  # noqa: E402
from bench.fl_matrix import run_matrix, setups, table  # noqa: E402

warnings.filterwarnings("ignore", message="Secure RNG turned off")


class TruthEvaluator:
    """Scores every account of every silo and compares with the full ground truth."""

    def __init__(self, catalog, home: Path, buckets: int):
        truth = set(pq.read_table(home / "truth" / "aml_pattern_accounts.parquet").column("account_id").to_pylist())
        self.silos: dict[str, AMLData] = {}
        for name, spec in catalog.silos.items():
            with open_silo(spec, "local", home) as connector:
                self.silos[name] = aml_examples(connector, buckets, catalog.money.region(spec.region).domestic_countries)
        self.all = AMLData.concat(list(self.silos.values()))
        self.truth = np.array([a in truth for a in self.all.account_ids], dtype=float)
        self.confirmed = self.all.labels == 1
        self.train = {name: d.subset(~held_out_mask(d.account_ids)) for name, d in self.silos.items()}

    def __call__(self, model) -> dict[str, float]:
        scores = predict(model, self.all)
        full = evaluate(scores, self.truth)
        unconfirmed = evaluate(scores[~self.confirmed], self.truth[~self.confirmed])
        return {"auc": full["auc"], "pr_auc": full["pr_auc"], "auc_unconfirmed": unconfirmed["auc"],
                "pr_auc_unconfirmed": unconfirmed["pr_auc"]}


def converged(curve: list[dict[str, float]], metric: str = "pr_auc", within: float = 0.01) -> int:
    """The first round (or epoch) whose metric is within `within` of the best the run reached."""
    best = max(c[metric] for c in curve)
    return next(i for i, c in enumerate(curve, start=1) if c[metric] >= best - within)


def federated(name, strategy, clients, spec, config, rounds, evaluator, checkpoint: Path, alone: dict | None = None) -> dict:
    """A federated run, scored after every round. With `alone` (silo -> training accounts), each
    round is followed by the same local training run silo by silo outside federation, so that
    both are timed under the same load."""
    curve: list[dict[str, float]] = []
    standalone: dict[str, list[float]] = {}

    def on_round(round_, weights, record):
        curve.append(evaluator(wire.load_into(spec.build(), weights)))
        for silo, data in (alone or {}).items():
            local = train_local(wire.load_into(spec.build(), weights), data, TrainConfig(**{**config.to_dict(), "dp": None}))
            standalone.setdefault(silo, []).append(local.seconds)

    started = time.perf_counter()
    result = FederatedTrainer(clients, spec, strategy, rounds=rounds, min_silos=len(clients), round_timeout_s=3600,
                              checkpoint_dir=checkpoint, config=config, on_round=on_round).fit()
    wall = time.perf_counter() - started
    history = result.history
    median = statistics.median
    return {"name": name, "curve": curve, "wall": wall, "epsilon": result.epsilon,
            "standalone_s": {silo: median(t) for silo, t in standalone.items()},
            "round_s": median(r["seconds"] for r in history),
            "slowest_call_s": median(max(r["silo_seconds"].values()) for r in history),
            "slowest_local_s": median(max(m["train_seconds"] for m in r["metrics"].values()) for r in history),
            "agent_extra_s": median(median(r["silo_seconds"][s] - r["metrics"][s]["train_seconds"] for s in r["participants"]) for r in history),
            "coordinator_s": median(r["seconds"] - max(r["silo_seconds"].values()) for r in history),
            "bytes_per_round": median(r["bytes_out"] + sum(r["bytes_in"].values()) for r in history)}


def central(name, parts: list[AMLData], spec, config, epochs, evaluator) -> dict:
    data = AMLData.concat(parts)
    model = spec.build(seed=0)
    curve, seconds = [], []
    for epoch in range(epochs):
        local = train_local(model, data, TrainConfig(**{**config.to_dict(), "seed": epoch, "dp": None}))
        seconds.append(local.seconds)
        curve.append(evaluator(model))
    return {"name": name, "curve": curve, "epoch_s": statistics.median(seconds)}


def matrix(args, catalog, home: Path, clients, rows) -> int:
    chosen = setups(args.buckets, args.minilm_tokens, args.minilm_samples or None, args.dp_noise)
    unknown = [e for e in args.encoders.split(",") if e not in chosen]
    if unknown:
        print(f"--encoders: unknown {unknown} (known: {', '.join(chosen)})", file=sys.stderr)
        return 2
    results = {}
    print(f"\nAML comparison matrix, {args.rounds} rounds (epochs without federation), DP-SGD {args.dp_rounds} rounds")
    for name in args.encoders.split(","):
        results[name] = run_matrix(chosen[name], catalog, home, clients, args.rounds, args.dp_rounds, args.threads, print)
    import torch

    report = {"command": " ".join(sys.argv), "scale": args.scale, "seed": args.seed, "rows": rows,
              "machine": {"cores": os.cpu_count(), "torch": torch.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu"},
              "scored": "every account of every silo against the full ground truth (planted laundering accounts)",
              "encoders": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str))
    print("\n" + table(results))
    for name, run in results.items():
        if "costs" in run:
            c = run["costs"]
            print(f"\n{name}: {c['bytes_per_round_lora'] / 1e6:.2f} MB per round against {c['bytes_per_round_full_model'] / 1e6:.0f} MB "
                  f"for full-model federated fine-tuning ({c['bytes_saving']:.0f}x less); frozen encoder per round: "
                  f"{c['frozen_encoder_tokens_per_round']:,} tokens, {c['frozen_encoder_gflop_per_round']:.0f} GFLOP, "
                  f"slowest silo's local training {c['local_train_seconds_per_round_slowest_silo']:.1f}s")
    print(f"\nwritten to {args.json}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=float(os.environ.get("SCALE", 1)))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=15, help="federated rounds (and pooled epochs)")
    parser.add_argument("--buckets", type=int, default=2**14, help="hashed n-gram buckets of the text encoder")
    parser.add_argument("--credit-epochs", type=int, default=DEFAULT_CONFIG.epochs, help="epochs of each credit model")
    parser.add_argument("--dp-rounds", type=int, default=0, help="also run DP-SGD federated training for this many rounds")
    parser.add_argument("--keep", action="store_true", help="keep the seeded deployment under bench/results/")
    parser.add_argument("--json", type=Path, help="run the encoder x training comparison matrix and write it here")
    parser.add_argument("--encoders", default="ngram,minilm-lora", help="with --json: the AML text encoders to compare")
    parser.add_argument("--minilm-tokens", type=int, default=48, help="with --json: tokens of memo text per account")
    parser.add_argument("--minilm-samples", type=int, default=512, help="with --json: accounts per silo per round for MiniLM (0: all)")
    parser.add_argument("--dp-noise", type=float, default=1.0, help="with --json: DP-SGD noise multiplier (clip 1, delta 1e-5)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="with --json: torch threads to score with")
    args = parser.parse_args()

    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="fl-bench-", dir=REPO / "bench" / "results"))
    try:
        catalog = load_catalog(REPO / "silos.yaml")
        policy = load_policy(REPO / "policies.yaml", catalog)
        report = seed_demo_bank(catalog, "local", home, args.scale, args.seed)
        rows = {silo: t for silo, t in report.rows.items()}
        print(f"federated learning, scale {args.scale:g}, seed {args.seed} (seeded in {report.seconds:.1f}s), "
              f"{os.cpu_count()} cores, torch {__import__('torch').__version__} on {'cuda' if __import__('torch').cuda.is_available() else 'cpu'}")
        print("  " + ", ".join(f"{s}: {t['accounts']:,} accounts, {t['transactions']:,} txns, {t['aml_cases']} cases" for s, t in rows.items()))

        spec = ModelSpec("aml_model", "aml", {"buckets": args.buckets})
        config = TrainConfig(epochs=1, lr=0.01, batch_size=256)
        t0 = time.perf_counter()
        evaluator = TruthEvaluator(catalog, home, args.buckets)
        print(f"  evaluator: {len(evaluator.all):,} accounts, {int(evaluator.truth.sum())} planted laundering accounts, "
              f"{int(evaluator.confirmed.sum())} confirmed by investigators ({time.perf_counter() - t0:.1f}s to build)")

        clients = {}
        for silo in catalog.silos:
            client = local_agent_client(catalog, policy, silo, home)
            register_learning_actions(client.agent)
            clients[silo] = client
        if args.json:
            return matrix(args, catalog, home, clients, rows)

        runs = [
            federated("federated FedAvg", FedAvg(), clients, spec, config, args.rounds, evaluator, home / "ckpt-fedavg", evaluator.train),
            federated("federated FedProx mu=0.01", FedProx(mu=0.01), clients, spec, config, args.rounds, evaluator, home / "ckpt-fedprox"),
        ]
        if args.dp_rounds:
            dp_config = TrainConfig(epochs=1, lr=0.01, batch_size=256, dp=DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5))
            dp_spec = ModelSpec("aml_model_dp", "aml", {"buckets": min(args.buckets, 2**12)})
            dp_evaluator = evaluator if dp_spec.params["buckets"] == args.buckets else TruthEvaluator(catalog, home, dp_spec.params["buckets"])
            runs.append(federated("federated DP-SGD (sigma 1, C 1)", FedAvg(), clients, dp_spec, dp_config, args.dp_rounds, dp_evaluator, home / "ckpt-dp"))
        pooled = central("centralised pooled (ceiling)", list(evaluator.train.values()), spec, config, args.rounds, evaluator)
        eu_alone = central("EU silo alone", [evaluator.train["eu_core"]], spec, config, args.rounds, evaluator)

        print("\nAML model, scored on every account against the full ground truth (final round / epoch)")
        print(f"{'model':<34} {'AUC':>7} {'PR-AUC':>7} {'AUC unconf.':>11} {'PR-AUC unconf.':>14} {'to converge':>12}")
        for run in [*runs, pooled, eu_alone]:
            last = run["curve"][-1]
            unit = "epochs" if "epoch_s" in run else "rounds"
            print(f"{run['name']:<34} {last['auc']:>7.4f} {last['pr_auc']:>7.4f} {last['auc_unconfirmed']:>11.4f} "
                  f"{last['pr_auc_unconfirmed']:>14.4f} {converged(run['curve']):>5} {unit}")
        print("  (unconf.: only accounts no investigator confirmed, i.e. finding the launderers nobody labelled;"
              " to converge: first round or epoch within 0.01 PR-AUC of the run's best)")
        print("  PR-AUC by round / epoch: " + "; ".join(
            f"{run['name'].split(' (')[0]} " + " ".join(f"{c['pr_auc']:.3f}" for c in run["curve"][:8]) for run in [runs[0], pooled, eu_alone]))
        for run in runs:
            if any(v is not None for v in run["epsilon"].values()):
                print(f"  {run['name']}: epsilon per silo " + ", ".join(f"{s} {e:.2f}" for s, e in run["epsilon"].items()) + " (delta 1e-5)")

        fedavg = runs[0]
        alone = fedavg["standalone_s"]
        print(f"\nPer-round cost of federation (median over rounds, FedAvg; the three agents share this machine's {os.cpu_count()} cores)")
        print(f"  federated round: {fedavg['round_s']:.2f}s wall = the agent calls in parallel (slowest {fedavg['slowest_call_s']:.2f}s, "
              f"its local training {fedavg['slowest_local_s']:.2f}s) + the coordinator {fedavg['coordinator_s']:.2f}s "
              "(encode, decode, FedAvg; the checkpoint write comes after)")
        print(f"  in each agent call besides training: {fedavg['agent_extra_s']:.2f}s (data fingerprint, held-out metrics, "
              f"encoding, ledger); {fedavg['bytes_per_round'] / 1e6:.1f} MB of weights moved per round")
        print("  the same local training outside federation, silo by silo, after each round: "
              + ", ".join(f"{s} {t:.2f}s" for s, t in alone.items()) + f" (sum {sum(alone.values()):.2f}s)")
        print(f"  overhead of federation per round: {fedavg['round_s'] - sum(alone.values()):+.2f}s against running the "
              f"same local training one silo after another ({fedavg['round_s'] / sum(alone.values()):.2f}x), "
              f"{fedavg['round_s'] - max(alone.values()):+.2f}s against its slowest silo alone "
              f"({fedavg['round_s'] / max(alone.values()):.2f}x, the bound with one machine per silo)")

        t0 = time.perf_counter()
        table, _ = Federation(catalog, clients).run(credit_features_sql(catalog, "eu_core"), "credit_scoring")
        build_s = time.perf_counter() - t0
        truth = pq.read_table(home / "truth" / "loan_truth.parquet")
        t0 = time.perf_counter()
        _, comparison = credit_comparison(table, truth, TrainConfig(**{**DEFAULT_CONFIG.to_dict(), "epochs": args.credit_epochs}))
        print(f"\nCredit model, {table.num_rows:,} loans (features built through the planner in {build_s:.1f}s, "
              f"{args.credit_epochs} epochs per model, trained in {time.perf_counter() - t0:.1f}s), same held-out loans")
        print(f"{'model':<34} {'AUC':>7} {'PR-AUC':>7} {'Brier':>7} {'ECE':>7}")
        labels = {"all_regions": "all-region features (federated)", "eu_only": "EU-only features", "oracle": "oracle (true_pd)"}
        for key, m in comparison.items():
            print(f"{labels[key]:<34} {m['auc']:>7.4f} {m['pr_auc']:>7.4f} {m['brier']:>7.4f} {m['ece']:>7.4f}")
        print(f"  held-out: {comparison['oracle']['n']:,} loans, {comparison['oracle']['positives']} defaults")
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
