"""The AML comparison matrix behind `bench/federated_learning.py --json PATH`.

For each text encoder (the hashed n-gram baseline, all-MiniLM-L6-v2 with LoRA adapters) and each
way of training it (each silo alone, FedAvg and FedProx through the silo agents, pooled training
on every silo's rows, which only a benchmark may do, and DP-SGD FedAvg), one set of figures:
AUC and PR-AUC on every account of every silo against the FULL ground truth, bytes that crossed a
boundary per round, seconds per round. Every way trains for the same number of passes (rounds, or
epochs for training without federation) with the same local settings, from the same start.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from fedlake.learning import weights as wire
from fedlake.learning.aggregate import FedAvg, FedProx
from fedlake.learning.coordinator import FederatedTrainer
from fedlake.learning.data import held_out_mask
from fedlake.learning.metrics import evaluate
from fedlake.learning.models import ModelSpec, aml_spec
from fedlake.learning.silo_examples import silo_examples
from fedlake.learning.train import DPConfig, TrainConfig, predict, train_local
from fedlake.silos import open_silo

BASE64 = 4 / 3  # weights cross as base64 inside JSON


@dataclass
class EncoderSetup:
    """One encoder's model and local settings in the matrix."""

    name: str
    spec: ModelSpec
    config: TrainConfig
    dp_config: TrainConfig | None  # None: no DP run for this encoder


def setups(buckets: int, minilm_tokens: int, minilm_samples: int | None, noise: float) -> dict[str, EncoderSetup]:
    dp = DPConfig(noise_multiplier=noise, max_grad_norm=1.0, delta=1e-5)
    ngram = TrainConfig(epochs=1, lr=0.01, batch_size=256)
    minilm = TrainConfig(epochs=1, lr=5e-3, batch_size=32, max_samples=minilm_samples)
    return {
        "ngram": EncoderSetup("ngram", aml_spec("aml_model", "ngram", {"buckets": buckets}), ngram, replace(ngram, dp=dp)),
        "minilm-lora": EncoderSetup("minilm-lora", aml_spec("aml_model", "minilm-lora", {"max_tokens": minilm_tokens}), minilm, None),
    }


class Truth:
    """Every account of every silo as `spec`'s examples, and the full ground truth for them."""

    def __init__(self, catalog, home: Path, spec: ModelSpec, threads: int):
        truth = set(pq.read_table(home / "truth" / "aml_pattern_accounts.parquet").column("account_id").to_pylist())
        self.silos = {}
        for name, silo in catalog.silos.items():
            with open_silo(silo, "local", home) as connector:
                self.silos[name] = silo_examples(connector, spec, catalog.money.region(silo.region).domestic_countries)
        first = next(iter(self.silos.values()))
        self.all = type(first).concat(list(self.silos.values()))
        self.truth = np.array([a in truth for a in self.all.account_ids], dtype=float)
        self.train = {name: d.subset(~held_out_mask(d.account_ids)) for name, d in self.silos.items()}
        self.threads = threads

    def score(self, model) -> dict[str, float]:
        started = time.perf_counter()
        metrics = evaluate(predict(model, self.all, batch_size=4096, threads=self.threads), self.truth)
        return {"auc": metrics["auc"], "pr_auc": metrics["pr_auc"], "eval_seconds": time.perf_counter() - started}


def _passes(spec: ModelSpec, data, config: TrainConfig, passes: int, seed: int = 0) -> tuple[Any, list[float]]:
    """Train one model on `data` for `passes` local runs (as many as a federation has rounds)."""
    model = spec.build(seed=seed)
    seconds = []
    for p in range(passes):
        local = train_local(model, data, replace(config, seed=config.seed + p + 1))
        seconds.append(local.seconds)
    return model, seconds


def local_only(setup: EncoderSetup, truth: Truth, passes: int) -> dict[str, Any]:
    per_silo, seconds = {}, []
    for silo, data in truth.train.items():
        model, s = _passes(setup.spec, data, setup.config, passes)
        per_silo[silo] = truth.score(model)
        seconds.extend(s)
    aucs = {s: m["auc"] for s, m in per_silo.items()}
    prs = {s: m["pr_auc"] for s, m in per_silo.items()}
    worst = min(per_silo, key=lambda s: prs[s])
    return {"auc": statistics.mean(aucs.values()), "pr_auc": statistics.mean(prs.values()),
            "worst": {"silo": worst, "auc": aucs[worst], "pr_auc": prs[worst]}, "per_silo": per_silo,
            "bytes_per_round": 0, "seconds_per_round": statistics.median(seconds),
            "note": "each silo trains on its own accounts alone; averaged over silos, and the worst by PR-AUC"}


def pooled(setup: EncoderSetup, truth: Truth, passes: int) -> dict[str, Any]:
    parts = list(truth.train.values())
    data = type(parts[0]).concat(parts)
    config = setup.config
    if config.max_samples:  # the same examples per pass as the federation's silos together
        config = replace(config, max_samples=config.max_samples * len(parts))
    model, seconds = _passes(setup.spec, data, config, passes)
    return {**truth.score(model), "bytes_per_round": None, "seconds_per_round": statistics.median(seconds),
            "note": "every silo's training accounts in one place: the ceiling no regulated bank may build; "
                    "it moves the rows, not weights, so bytes per round do not apply"}


def federated(setup: EncoderSetup, truth: Truth, clients, strategy, rounds: int, checkpoint: Path, config: TrainConfig | None = None) -> dict[str, Any]:
    config = config or setup.config
    trainer = FederatedTrainer(clients, setup.spec, strategy, rounds=rounds, min_silos=len(clients), round_timeout_s=3600,
                               checkpoint_dir=checkpoint, config=config)
    result = trainer.fit()
    history = result.history
    scored = truth.score(wire.load_into(setup.spec.build(), result.weights))
    out = {**scored,
           "bytes_per_round": statistics.median(r["bytes_out"] + sum(r["bytes_in"].values()) for r in history),
           "seconds_per_round": statistics.median(r["seconds"] for r in history),
           "local_train_seconds_per_round": statistics.median(max(m["train_seconds"] for m in r["metrics"].values()) for r in history)}
    if config.dp is not None:
        out["epsilon"] = result.epsilon
        out["dp"] = {"noise_multiplier": config.dp.noise_multiplier, "max_grad_norm": config.dp.max_grad_norm,
                     "delta": config.dp.delta, "batch_size": config.batch_size, "rounds": rounds,
                     "accounting": "sample-level DP-SGD (Opacus, RDP accountant) in each silo, composed over the rounds"}
    return out


def minilm_costs(setup: EncoderSetup, truth: Truth, fedavg_run: dict[str, Any], silos: int) -> dict[str, Any]:
    """What LoRA saves against full-model federated fine-tuning, and what the frozen encoder costs."""
    from fedlake.learning.lora import frozen_flops, full_model_parameters

    model = setup.spec.build(seed=0)
    travelling = model.travelling_parameters()
    full = full_model_parameters(model)
    full_bytes = 2 * silos * 4 * full * BASE64  # every weight out to each silo and back, as float32 in base64
    cap = setup.config.max_samples
    tokens = 0
    for data in truth.train.values():  # tokens each silo feeds the encoder per round (a sample's share where capped)
        share = min(1.0, cap / len(data)) if cap else 1.0
        tokens += int(data.tokens * share * setup.config.epochs)
    return {
        "trained_parameters": travelling, "full_model_parameters": full,
        "bytes_per_round_lora": fedavg_run["bytes_per_round"], "bytes_per_round_full_model": full_bytes,
        "bytes_saving": full_bytes / fedavg_run["bytes_per_round"],
        "frozen_encoder_tokens_per_round": tokens,
        "frozen_encoder_gflop_per_round": frozen_flops(model, tokens) / 1e9,
        "local_train_seconds_per_round_slowest_silo": fedavg_run["local_train_seconds_per_round"],
    }


def run_matrix(setup: EncoderSetup, catalog, home: Path, clients, rounds: int, dp_rounds: int, threads: int, log) -> dict[str, Any]:
    started = time.perf_counter()
    truth = Truth(catalog, home, setup.spec, threads)
    log(f"  {setup.name}: {len(truth.all):,} accounts, {int(truth.truth.sum())} planted laundering accounts "
        f"({time.perf_counter() - started:.1f}s to build the examples)")
    out: dict[str, Any] = {"spec": setup.spec.to_dict(), "config": setup.config.to_dict(), "rounds": rounds}
    steps = [("local_only", lambda: local_only(setup, truth, rounds)),
             ("fedavg", lambda: federated(setup, truth, clients, FedAvg(), rounds, home / f"ckpt-{setup.name}-fedavg")),
             ("fedprox", lambda: federated(setup, truth, clients, FedProx(mu=0.01), rounds, home / f"ckpt-{setup.name}-fedprox")),
             ("pooled", lambda: pooled(setup, truth, rounds))]
    if setup.dp_config is not None and dp_rounds:
        steps.append(("fedavg_dp", lambda: federated(setup, truth, clients, FedAvg(), dp_rounds, home / f"ckpt-{setup.name}-dp", setup.dp_config)))
    for key, step in steps:
        t0 = time.perf_counter()
        out[key] = step()
        log(f"    {key:<10} AUC {out[key]['auc']:.4f}  PR-AUC {out[key]['pr_auc']:.4f}  ({time.perf_counter() - t0:.0f}s)")
    if setup.spec.kind == "aml_minilm":
        out["costs"] = minilm_costs(setup, truth, out["fedavg"], len(clients))
    out["seconds"] = time.perf_counter() - started
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    """The README's markdown table."""
    lines = ["| encoder | training | AUC | PR-AUC | bytes / round | s / round |", "|---|---|---:|---:|---:|---:|"]
    names = {"local_only": "each silo alone (mean)", "fedavg": "FedAvg", "fedprox": "FedProx (mu 0.01)",
             "pooled": "pooled (illegal ceiling)", "fedavg_dp": "FedAvg + DP-SGD"}
    for encoder, run in results.items():
        for key, label in names.items():
            if key not in run:
                continue
            r = run[key]
            moved = "n/a" if r["bytes_per_round"] is None else f"{r['bytes_per_round'] / 1e6:.2f} MB"
            if key == "fedavg_dp":
                eps = ", ".join(f"{e:.2f}" for e in r["epsilon"].values() if e is not None)
                label = f"{label} (ε {eps})"
            lines.append(f"| {encoder} | {label} | {r['auc']:.4f} | {r['pr_auc']:.4f} | {moved} | {r['seconds_per_round']:.2f} |")
            if key == "local_only":
                w = r["worst"]
                lines.append(f"| {encoder} | worst silo alone ({w['silo']}) | {w['auc']:.4f} | {w['pr_auc']:.4f} | 0 | |")
    return "\n".join(lines)
