"""The MiniLM-LoRA local step against a bare torch loop of the same model on the same device.

    .venv/bin/python bench/gpu_minilm.py        # MINILM_STEPS=30 MINILM_BATCH=32 MINILM_TOKENS=48

fedlake's step is train_local on memo-text examples as a silo agent holds them: numpy arrays in
host memory, each batch gathered and copied to the device as the round goes. The bare loop keeps
every tensor on the device from the start and indexes it there. Both train the same MiniLMAMLNet
(all-MiniLM-L6-v2 with LoRA on query and value, frozen base), the same batches of the same
synthetic accounts (memo-like token lengths, 1 % positives), with Adam, for the same number of
steps after a warm-up. The ratio fedlake / bare says whether the silo's data feed starves the
device (the goal is at least 0.5).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedlake.learning.memo_text import MemoTextData  # noqa: E402
from fedlake.learning.models import aml_spec  # noqa: E402
from fedlake.learning.train import TrainConfig, train_local  # noqa: E402

STEPS = int(os.environ.get("MINILM_STEPS", 30))
BATCH = int(os.environ.get("MINILM_BATCH", 32))
TOKENS = int(os.environ.get("MINILM_TOKENS", 48))
WARMUP = 3


def synthetic(n: int, rng: np.random.Generator) -> MemoTextData:
    lengths = np.clip(rng.poisson(TOKENS * 0.6, n), 2, TOKENS)
    ids = rng.integers(1000, 30000, (n, TOKENS)).astype(np.int64)
    mask = (np.arange(TOKENS)[None, :] < lengths[:, None]).astype(np.int64)
    ids[:, 0], ids[np.arange(n), lengths - 1] = 101, 102  # [CLS] ... [SEP]
    ids[mask == 0] = 0
    labels = (rng.random(n) < 0.01).astype(np.float32)
    numeric = rng.normal(size=(n, 16)).astype(np.float32)
    return MemoTextData(np.array([f"A{i}" for i in range(n)], dtype=object), numeric, ids, mask, labels)


def fedlake_step(spec, data: MemoTextData, device: torch.device) -> float:
    model = spec.build(seed=0)
    config = TrainConfig(epochs=1, lr=3e-3, batch_size=BATCH, device=str(device), cpu_threads=None)
    train_local(model, data.subset(np.arange(WARMUP * BATCH)), config)
    return len(data) / train_local(model, data, replace(config, seed=1)).seconds


def bare_loop(spec, data: MemoTextData, device: torch.device) -> float:
    model = spec.build(seed=0).to(device).train()
    numeric, ids, mask, labels = (torch.as_tensor(x, device=device) for x in (data.numeric, data.input_ids, data.attention_mask, data.labels))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(1)).to(device)
    started = 0.0
    batches = [order[i : i + BATCH] for i in range(0, len(data), BATCH)]
    for step, index in enumerate([*batches[:WARMUP], *batches]):
        if step == WARMUP:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        loss = loss_fn(model(numeric[index], ids[index], mask[index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(data) / (time.perf_counter() - started)


def main() -> None:
    spec = aml_spec("aml_model", "minilm-lora", {"max_tokens": TOKENS})
    data = synthetic(STEPS * BATCH, np.random.default_rng(0))
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"MiniLM-LoRA local step, {STEPS} steps of {BATCH} accounts x {TOKENS} tokens (after {WARMUP} warm-up steps); "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for device in devices:
        name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
        ours, bare = fedlake_step(spec, data, device), bare_loop(spec, data, device)
        print(f"  {device.type:<4} ({name}): fedlake train_local {ours:9,.1f} samples/s, bare torch loop {bare:9,.1f} samples/s, "
              f"ratio {ours / bare:.2f} (goal >= 0.5)")
    if not torch.cuda.is_available():
        print("  cuda: not available on this machine (torch.cuda.is_available() is False): CPU figures only")


if __name__ == "__main__":
    main()
