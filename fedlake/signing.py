"""Ed25519 keys that sign each writer's chain of the audit ledger.

A hash chain alone can be recomputed by anyone who can write the table; a signature by the writer's
own key cannot. In prod every agent process is given its own private key (FEDLAKE_SIGNING_KEY) and
the verifier holds only public keys (FEDLAKE_LEDGER_KEYS); locally both live under the data folder.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedlake.errors import FedlakeError

SIGNING_KEY_ENV = "FEDLAKE_SIGNING_KEY"  # a PEM Ed25519 private key: this process's own
PUBLIC_KEYS_ENV = "FEDLAKE_LEDGER_KEYS"  # a folder of ledger-<name>.ed25519.pub files
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_PUBLIC_SUFFIX = ".ed25519.pub"


def key_path(home: Path, name: str) -> Path:
    """Where the local deployment keeps the private key of chain `name`."""
    if not _NAME.match(name):
        raise FedlakeError(f"ledger chain name {name!r} cannot name a key file: use letters, digits, '_', '.' or '-'")
    return home / "keys" / f"ledger-{name}.ed25519"


def signing_key(home: Path | None, name: str) -> Ed25519PrivateKey:
    """The key that signs chain `name`: FEDLAKE_SIGNING_KEY's PEM file when set, else one made once
    under home/keys (0600, first writer wins) with its public key written beside it."""
    configured = os.environ.get(SIGNING_KEY_ENV)
    if configured:
        return _load_private(Path(configured))
    if home is None:
        raise FedlakeError(f"no ledger signing key for {name}: set {SIGNING_KEY_ENV} to a PEM Ed25519 private key")
    path = key_path(home, name)
    if not path.exists():
        _create_once(path, Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key = _load_private(path)
    public = path.with_name(path.name + ".pub")
    if not public.exists():
        tmp = public.with_name(f"{public.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        tmp.write_bytes(public_pem(key.public_key()))
        os.replace(tmp, public)  # same bytes whoever writes, so the last writer is as good as the first
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_keys(home: Path | None) -> dict[str, Ed25519PublicKey]:
    """Every chain's public key: from FEDLAKE_LEDGER_KEYS when set, else from home/keys."""
    configured = os.environ.get(PUBLIC_KEYS_ENV)
    folder = Path(configured) if configured else (home / "keys" if home is not None else None)
    if folder is None or not folder.is_dir():
        return {}
    keys = {}
    for path in sorted(folder.glob(f"ledger-*{_PUBLIC_SUFFIX}")):
        name = path.name[len("ledger-"):-len(_PUBLIC_SUFFIX)]
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except ValueError as exc:
            raise FedlakeError(f"{path}: not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise FedlakeError(f"{path}: not an Ed25519 public key")
        keys[name] = key
    return keys


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise FedlakeError(f"{path}: cannot read the ledger signing key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise FedlakeError(f"{path}: not an Ed25519 private key")
    return key


def _create_once(path: Path, content: bytes) -> None:
    """Write a private file that concurrent processes agree on: the first link wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(content)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
