"""Ledger signing keys for a deployment: one Ed25519 key per chain (each silo's agent, the
coordinator), private keys 0600 beside a `public/` folder the verifier reads (FEDLAKE_LEDGER_KEYS)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlake.agent.tls import write_private
from fedlake.signing import public_pem


def signing_key_files(folder: Path, names: Iterable[str], public: Path | None = None) -> dict[str, Path]:
    """The private key file of each chain, made once; its public key is (re)written to `public`
    (folder/public unless given)."""
    public = public or folder / "public"
    public.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    paths = {}
    for name in names:
        path = folder / f"ledger-{name}.ed25519"
        if not path.exists():
            write_private(path, Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        (public / f"ledger-{name}.ed25519.pub").write_bytes(public_pem(key.public_key()))
        paths[name] = path
    return paths
