"""The local train step that runs where the data lies, with FedProx and optional DP-SGD.

FedProx adds mu/2 * ||w - w_global||^2 to the loss, which keeps a skewed silo's local epochs from
drifting far from the global model. DP-SGD (Opacus) clips each example's gradient and adds
Gaussian noise, so the weights that leave bound what they say about any one account; the spent
epsilon is accounted with Opacus's RDP accountant over every round this silo took part in.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from fedlake.learning.data import Examples
from fedlake.learning.metrics import evaluate
from fedlake.learning.models import default_device

__all__ = ["DPConfig", "LocalResult", "TrainConfig", "dp_epsilon", "evaluate", "predict", "train_local"]

DPRecord = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps): one Opacus accountant entry
OPTIMIZERS = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
}


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings: noise_multiplier (noise std over clip norm), max_grad_norm (the per-example
    clip) and delta (the epsilon is reported for this delta). The noise comes from torch's default
    generator (Opacus's secure_mode off, which needs torchcsprng): sound for measuring utility and
    epsilon; a release against a strong adversary needs a cryptographically secure generator."""

    noise_multiplier: float
    max_grad_norm: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.noise_multiplier <= 0 or self.max_grad_norm <= 0 or not 0 < self.delta < 1:
            raise ValueError(
                f"dp settings need noise_multiplier > 0, max_grad_norm > 0 and 0 < delta < 1; got {asdict(self)}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one silo's local training in one round."""

    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 256
    mu: float = 0.0  # FedProx proximal weight; 0 is plain FedAvg local training
    pos_weight: float = 1.0  # weight of a positive example in the loss (rare labels)
    dp: DPConfig | None = None
    seed: int = 0
    device: str | None = None  # None: CUDA where available, else CPU
    cpu_threads: int | None = 1  # torch intra-op threads on CPU; None leaves torch's setting
    max_samples: int | None = None  # a short fine-tune: at most this many examples per round (see training_sample)
    # "adam", or "sgd" (momentum 0.9) for DP-SGD: Adam scales every coordinate's step to about lr,
    # so under DP the noise of coordinates without signal (most hashed n-gram buckets) moves as far as the signal
    optimizer: str = "adam"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.mu < 0 or self.pos_weight <= 0 or (self.cpu_threads or 1) < 1:
            raise ValueError(
                f"train config needs epochs >= 1, batch_size >= 1, lr > 0, mu >= 0, pos_weight > 0, cpu_threads >= 1; got {self.to_dict()}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train config: optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if self.max_samples is not None and (self.max_samples < 2 or self.dp is not None):
            raise ValueError(f"max_samples needs at least 2 and no dp (DP-SGD accounts for its own sampling); got {self.max_samples}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown training hyper-parameter(s) {sorted(unknown)} (known: {', '.join(sorted(known))})")
        values = dict(raw)
        if isinstance(values.get("dp"), dict):
            values["dp"] = DPConfig(**values["dp"])
        return cls(**values)


@dataclass
class LocalResult:
    state: dict[str, torch.Tensor]
    n_samples: int
    loss: float
    steps: int
    seconds: float
    epsilon: float | None = None
    dp_record: DPRecord | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _CPUThreads:
    """torch's intra-op thread count is process-wide: the first of several concurrent trainings
    sets it, the last one restores it. These models are too small for parallel kernels to pay;
    with several silos training side by side in one process (the local deployment), or on a busy
    machine, spinning kernel threads make an epoch many times slower than one thread does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved = 0

    @contextmanager
    def limit(self, threads: int | None) -> Iterator[None]:
        if threads is None:
            yield
            return
        with self._lock:
            if self._users == 0:
                self._saved = torch.get_num_threads()
                torch.set_num_threads(threads)
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    torch.set_num_threads(self._saved)


_cpu_threads = _CPUThreads()


def _device(config: TrainConfig) -> torch.device:
    return torch.device(config.device) if config.device else default_device()


def _tensors(inputs: tuple[np.ndarray, ...], device: torch.device) -> list[torch.Tensor]:
    return [torch.as_tensor(x, device=device) for x in inputs]


def proximal_term(model: nn.Module, anchor: list[torch.Tensor]) -> torch.Tensor:
    """||w - w_global||^2 over the trainable parameters (FedProx multiplies it by mu/2)."""
    return sum(((p - a) ** 2).sum() for p, a in zip((p for p in model.parameters() if p.requires_grad), anchor))


def dp_epsilon(history: list[DPRecord], delta: float) -> float:
    """Epsilon spent by a sequence of DP-SGD runs on the same data (RDP composition)."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [tuple(h) for h in history]
    return float(accountant.get_epsilon(delta=delta))


def training_sample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A mask of `size` examples, drawn afresh each round (the seed moves with it): the labelled
    positives first, up to half of it, since at a base rate under 1 % a uniform draw holds none."""
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(labels > 0), np.flatnonzero(labels <= 0)
    take = rng.permutation(positives)[: size // 2]
    chosen = np.concatenate([take, rng.permutation(negatives)[: size - len(take)]])
    mask = np.zeros(len(labels), dtype=bool)
    mask[chosen] = True
    return mask


def train_local(model: nn.Module, data: Examples, config: TrainConfig, dp_history: list[DPRecord] | None = None) -> LocalResult:
    """Train `model` in place on `data` for config.epochs and return its new weights.

    The FedProx anchor is the weights the model starts with (the global model of the round). With
    config.dp, training is DP-SGD with Poisson sampling, and the epsilon returned is that of this
    run composed with `dp_history` (the silo's earlier rounds of the same training).
    """
    n = len(data)
    if n == 0:
        raise ValueError("no training examples: the silo has no rows to train on")
    if config.max_samples and n > config.max_samples:
        data = data.subset(training_sample(data.labels, config.max_samples, config.seed))
    device = _device(config)
    with _cpu_threads.limit(config.cpu_threads if device.type == "cpu" else None):
        return _train(model, data, config, device, dp_history)


def _train(model: nn.Module, data: Examples, config: TrainConfig, device: torch.device, dp_history: list[DPRecord] | None) -> LocalResult:
    n = len(data)
    model.to(device).train()
    anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    optimizer = OPTIMIZERS[config.optimizer](model.parameters(), config.lr)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(config.pos_weight, device=device))
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    total_loss, steps = 0.0, 0
    if config.dp is None:
        for _ in range(config.epochs):
            order = rng.permutation(n)
            for start in range(0, n, config.batch_size):
                index = order[start : start + config.batch_size]
                logits = model(*_tensors(data.inputs(index), device))
                loss = loss_fn(logits, torch.as_tensor(data.labels[index], device=device))
                if config.mu > 0:
                    loss = loss + config.mu / 2 * proximal_term(model, anchor)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach())
                steps += 1
        result = LocalResult({}, n, total_loss / max(steps, 1), steps, 0.0)
    else:
        result = _train_dp(model, data, config, optimizer, loss_fn, anchor, device, rng, dp_history or [])
    result.seconds = time.perf_counter() - started
    result.state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    return result


def _train_dp(model, data, config, optimizer, loss_fn, anchor, device, rng, dp_history) -> LocalResult:
    """DP-SGD through Opacus. The data loader yields example indices (Poisson-sampled), and the
    batch is built from them, so variable-length text bags need no special collate. The proximal
    pull is applied as its own step after each noised update: it does not depend on the data, so
    it costs no privacy, and Opacus only noises gradients of the loss on examples."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    n = len(data)
    dp = config.dp
    warnings.filterwarnings("ignore", message="Secure RNG turned off", module="opacus")
    # Opacus's hooks fire on module outputs since integer ids need no gradient: expected here.
    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
    loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=min(config.batch_size, n),
                        generator=torch.Generator().manual_seed(int(rng.integers(2**31))))
    engine = PrivacyEngine(accountant="rdp")
    private, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader,
        noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm, poisson_sampling=True,
    )
    total_loss, steps = 0.0, 0
    try:
        for _ in range(config.epochs):
            for (index,) in loader:
                if len(index) == 0:  # Poisson sampling drew nobody: nothing to release this step
                    continue
                index = index.numpy()
                logits = private(*_tensors(data.inputs(index), device))
                loss = loss_fn(logits, torch.as_tensor(data.labels[index], device=device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if config.mu > 0:
                    with torch.no_grad():
                        for p, a in zip((p for p in model.parameters() if p.requires_grad), anchor):
                            p.sub_(config.lr * config.mu * (p - a))
                total_loss += float(loss.detach())
                steps += 1
    finally:
        private.remove_hooks()
    record = (dp.noise_multiplier, float(loader.sample_rate), steps)
    epsilon = dp_epsilon([*dp_history, record], dp.delta)
    return LocalResult({}, n, total_loss / max(steps, 1), steps, 0.0, epsilon, record)


@torch.no_grad()
def predict(model: nn.Module, data: Examples, batch_size: int = 8192, device: str | None = None, threads: int | None = 1) -> np.ndarray:
    """Probabilities for every example, in order."""
    target = torch.device(device) if device else default_device()
    model.to(target).eval()
    out = []
    with _cpu_threads.limit(threads if target.type == "cpu" else None):
        for start in range(0, len(data), batch_size):
            index = np.arange(start, min(start + batch_size, len(data)))
            out.append(torch.sigmoid(model(*_tensors(data.inputs(index), target))).cpu().numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)
