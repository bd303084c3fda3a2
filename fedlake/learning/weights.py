"""Model weights on the wire and on disk: a state dict as an .npz, base64 for JSON.

npz, not torch.save: loading it runs no code (allow_pickle=False), so a silo can accept global
weights from the coordinator, and the coordinator updates from silos, without trusting a pickle.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

Weights = dict[str, np.ndarray]


class WeightsError(ValueError):
    """Weights that cannot be read, or that do not fit the model they are meant for."""


def to_numpy(state: dict[str, torch.Tensor] | Weights) -> Weights:
    return {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in state.items()}


def model_weights(model: nn.Module) -> Weights:
    return to_numpy(model.state_dict())


def load_into(model: nn.Module, weights: Weights) -> nn.Module:
    """Load weights into a model, naming what does not fit (missing, unexpected or misshapen keys)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    misshapen = sorted(k for k in set(own) & set(weights) if tuple(own[k].shape) != tuple(weights[k].shape))
    if missing or unexpected or misshapen:
        raise WeightsError(
            f"weights do not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}, "
            f"wrong shape {[(k, tuple(weights[k].shape), tuple(own[k].shape)) for k in misshapen]}; "
            "were they made for another model spec?"
        )
    model.load_state_dict({k: torch.as_tensor(np.array(v), dtype=own[k].dtype) for k, v in weights.items()})
    return model


def to_bytes(weights: Weights) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **weights)
    return buffer.getvalue()


def from_bytes(raw: bytes) -> Weights:
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise WeightsError(f"not a weights archive (.npz without pickles): {exc}") from None


def encode(weights: Weights) -> str:
    """The JSON-safe form that crosses the wire."""
    return base64.b64encode(to_bytes(weights)).decode("ascii")


def decode(payload: str) -> Weights:
    try:
        raw = base64.b64decode(payload.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, AttributeError) as exc:
        raise WeightsError(f"weights payload is not base64: {exc}") from None
    return from_bytes(raw)


def write_atomic(path: Path, data: bytes) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(path: Path, weights: Weights) -> None:
    write_atomic(path, to_bytes(weights))


def load(path: Path) -> Weights:
    return from_bytes(Path(path).read_bytes())
