"""The two model families and the spec that rebuilds either one from plain JSON.

Only torch and numpy are imported here, so that a bare machine (bench/gpu_check.sh on a GPU host)
can load this file on its own. Models are small on purpose: they travel to every silo each round.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

AML_DEFAULTS: dict[str, Any] = {"n_numeric": 16, "buckets": 2**14, "text_dim": 16, "hidden": 32, "prior": 0.005, "train_text": True}
CREDIT_DEFAULTS: dict[str, Any] = {"n_features": 11, "hidden": 32}
_BUILDING = threading.RLock()  # model initialisation uses torch's global generator
AML_MINILM_DEFAULTS: dict[str, Any] = {"n_numeric": 16, "encoder": "all-MiniLM-L6-v2", "max_tokens": 48, "lora_r": 8,
                                       "lora_alpha": 16, "text_dim": 32, "hidden": 32, "prior": 0.005}
AML_KINDS = ("aml", "aml_minilm")  # trained inside the silos, on their own accounts and memos
# The AML text encoders to choose from: the light hashed n-gram baseline, or the pretrained
# all-MiniLM-L6-v2 fine-tuned with LoRA adapters.
AML_ENCODERS = {"ngram": "aml", "minilm-lora": "aml_minilm"}


class CreditNet(nn.Module):
    """A tabular MLP for default probability. The standardization is stored as buffers, so a saved
    model scores raw feature rows exactly as it did when it was trained."""

    def __init__(self, n_features: int, hidden: int = 32):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def set_standardization(self, features: np.ndarray) -> None:
        """Fit the buffers on training rows; a constant column keeps std 1 rather than dividing by 0."""
        mean = features.mean(axis=0)
        std = features.std(axis=0)
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(np.where(std > 1e-9, std, 1.0), dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.mean) / self.std).squeeze(-1)


class AMLNet(nn.Module):
    """Scores an account from its numeric behaviour and the bag of hashed character n-grams of its
    memos. The text encoder is an EmbeddingBag trained from scratch: no pretrained vocabulary has
    to be shipped into a silo, and its per-sample gradients are supported by Opacus for DP-SGD.

    train_text=False keeps the embedding at its seeded random start (a fixed random projection of
    the bag) and trains the rest: under DP-SGD the bag's per-sample gradients are most of the cost
    (about ten times the rest on the demo bank), and no noise lands on its buckets x text_dim
    coordinates. Whether it also trains better under DP varies from run to run (README)."""

    def __init__(self, n_numeric: int, buckets: int = 2**14, text_dim: int = 16, hidden: int = 32, prior: float = 0.005,
                 train_text: bool = True):
        super().__init__()
        self.buckets = buckets
        self.numeric = nn.Sequential(nn.Linear(n_numeric, hidden), nn.ReLU())
        self.text = nn.EmbeddingBag(buckets, text_dim, mode="mean")
        nn.init.normal_(self.text.weight, std=0.1)
        self.text.weight.requires_grad_(train_text)
        self.head = nn.Sequential(nn.Linear(hidden + text_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        # Start at the base rate of laundering: otherwise the first steps are spent pushing every
        # score down, and under DP-SGD the clipped, noised gradients of the rare positives never
        # catch up with that drift.
        nn.init.constant_(self.head[-1].bias, float(np.log(prior / (1 - prior))))

    def forward(self, numeric: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """`ids` are all accounts' n-gram bucket ids concatenated, `offsets` where each account's start;
        every account has at least one id (an empty text has its own bucket)."""
        text = self.text(ids, offsets)
        return self.head(torch.cat([self.numeric(numeric), text], dim=1)).squeeze(-1)


def _minilm_aml(**params: Any) -> nn.Module:
    """The pretrained-encoder AML model; transformers and peft are imported only for this kind."""
    from fedlake.learning.lora import MiniLMAMLNet

    return MiniLMAMLNet(**params)


_KINDS: dict[str, tuple[Any, dict[str, Any]]] = {
    "aml": (AMLNet, AML_DEFAULTS),
    "aml_minilm": (_minilm_aml, AML_MINILM_DEFAULTS),
    "credit": (CreditNet, CREDIT_DEFAULTS),
}


@dataclass(frozen=True)
class ModelSpec:
    """What a model is, as plain JSON: enough for a silo, a registry or a resumed run to rebuild it."""

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"model spec '{self.name}': unknown kind '{self.kind}' (known: {', '.join(sorted(_KINDS))})")
        _, defaults = _KINDS[self.kind]
        unknown = set(self.params) - set(defaults)
        if unknown:
            raise ValueError(
                f"model spec '{self.name}': unknown parameter(s) {sorted(unknown)} for kind '{self.kind}' "
                f"(known: {', '.join(sorted(defaults))})"
            )
        object.__setattr__(self, "params", {**defaults, **self.params})

    def build(self, seed: int | None = None) -> nn.Module:
        """A fresh model; with a seed, the same initial weights on every machine. Initialisation
        draws from torch's process-wide generator, so builds take turns: a training started
        alongside another gets the same seeded weights as it would alone."""
        cls, _ = _KINDS[self.kind]
        with _BUILDING:
            if seed is None:
                return cls(**self.params)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return cls(**self.params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelSpec:
        missing = {"name", "kind"} - set(raw)
        if missing:
            raise ValueError(f"a model spec needs {sorted(missing)}; got keys {sorted(raw)}")
        return cls(name=raw["name"], kind=raw["kind"], params=dict(raw.get("params") or {}))


def aml_spec(name: str, encoder: str, params: dict[str, Any] | None = None) -> ModelSpec:
    """The AML model with the chosen text encoder (a key of AML_ENCODERS)."""
    if encoder not in AML_ENCODERS:
        raise ValueError(f"model '{name}': unknown AML text encoder {encoder!r} (choose one of: {', '.join(AML_ENCODERS)})")
    return ModelSpec(name, AML_ENCODERS[encoder], dict(params or {}))


def default_device() -> torch.device:
    """CUDA where the machine has it: the silo's own accelerator, if any, trains its rounds."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
