"""What the gate does to a column it can make compliant: pseudonymize or generalize, in the silo.

Pseudonyms are keyed HMAC-SHA256 over a normalized value: every silo holds the same key (from its
own environment), so the same subject gets the same token everywhere and cross-silo joins still
work, while the key itself never leaves.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fedlake.errors import FedlakeError

PSEUDONYM_KEY_ENV = "FEDLAKE_PSEUDONYM_KEY"
TOKEN_HEX_CHARS = 32


def pseudonym_key(home: Path | None = None) -> bytes:
    """The pseudonymization key from the silo's environment; the local deployment keeps one in its
    data folder (created once, readable by its owner only)."""
    value = os.environ.get(PSEUDONYM_KEY_ENV)
    if value:
        return value.encode()
    if home is None:
        raise FedlakeError(f"{PSEUDONYM_KEY_ENV} is not set: every silo agent needs the shared pseudonymization key")
    return local_secret(home, "pseudonym.key").encode()


def local_secret(home: Path, name: str) -> str:
    """A random secret kept under the local deployment's data folder, made on first use."""
    path = home / "keys" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(secrets.token_hex(32))
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)  # first writer wins, so concurrent processes agree on one secret
        except FileExistsError:
            pass
        tmp.unlink()
    return path.read_text().strip()


ASCII_WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"  # what str.strip() removes from ASCII text


def pseudonymize(values: pa.Array | pa.ChunkedArray, key: bytes) -> pa.Array:
    """Tokens for values: HMAC-SHA256 of the trimmed, lower-cased text; nulls stay null."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    text = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
    unique = pc.unique(text)
    if pc.all(pc.string_is_ascii(unique)).as_py() is not False:
        tokens = _hmac_in_duckdb(pc.ascii_lower(pc.utf8_trim(unique, characters=ASCII_WHITESPACE)), key)
    else:
        digest = hmac.digest  # the one-shot C path: a third faster than hmac.new per value
        tokens = pa.array([
            None if v is None else digest(key, v.strip().lower().encode(), "sha256").hex()[:TOKEN_HEX_CHARS]
            for v in unique.to_pylist()
        ], pa.string())
    return pc.take(tokens, pc.index_in(text, unique))


def _hmac_in_duckdb(normalized: pa.Array, key: bytes) -> pa.Array:
    """HMAC-SHA256 (RFC 2104) of each value, vectorized in DuckDB, outside the GIL: a third of the
    time of hashing value by value in Python. For ASCII text, trimmed and lower-cased as Python
    would, the tokens are the same."""
    block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
    inner, outer = bytes(b ^ 0x36 for b in block), bytes(b ^ 0x5C for b in block)
    db = duckdb.connect(config={"enable_external_access": False, "autoinstall_known_extensions": False})
    try:
        db.register("normalized", pa.table({"v": normalized}))
        return db.execute(
            f"SELECT substr(sha256($outer::BLOB || unhex(sha256($inner::BLOB || encode(v)))), 1, {TOKEN_HEX_CHARS}) "
            "FROM normalized", {"inner": inner, "outer": outer},
        ).to_arrow_table().column(0).combine_chunks().cast(pa.string())
    finally:
        db.close()


def generalize(values: pa.Array | pa.ChunkedArray, spec: dict[str, Any]) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    method = spec["method"]
    if method == "prefix":
        length = int(spec.get("length", 2))
        text = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
        return pc.utf8_slice_codeunits(text, 0, length)
    if method == "age_band":
        return _age_bands(values, int(spec.get("width", 10)), dt.date.fromisoformat(str(spec.get("as_of", "2026-01-01"))))
    raise FedlakeError(f"unknown generalization method {method!r}")


def _age_bands(values: pa.Array, width: int, as_of: dt.date) -> pa.Array:
    if not (pa.types.is_date(values.type) or pa.types.is_timestamp(values.type)):
        raise FedlakeError(f"age_band generalizes dates, not {values.type}")
    dates = pc.cast(values, pa.date32()) if not pa.types.is_date32(values.type) else values
    years = pc.year(dates).to_numpy(zero_copy_only=False).astype("float64")
    months = pc.month(dates).to_numpy(zero_copy_only=False).astype("float64")
    days = pc.day(dates).to_numpy(zero_copy_only=False).astype("float64")
    before_birthday = (months > as_of.month) | ((months == as_of.month) & (days > as_of.day))
    age = as_of.year - years - before_birthday
    low = np.floor(age / width) * width
    labels = [None if np.isnan(lo) else f"{int(lo)}-{int(lo) + width - 1}" for lo in low]
    mask = pc.is_null(dates).to_numpy(zero_copy_only=False)
    return pa.array([None if m else label for m, label in zip(mask, labels)], pa.string())
