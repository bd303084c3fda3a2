"""What a mask does to a column it can make compliant: pseudonymize or generalize, in the silo.

Pseudonyms are keyed HMAC-SHA256 over a normalized value. Every silo holds the same master secret
(from its own environment) and derives one key per purpose and join domain from it (HKDF), so the
same subject gets the same token in every silo for columns declared to join, and for no others:
tokens of one purpose or domain say nothing about another's. The keys never leave the silos.

Masks run as SQL inside the silo engine (DuckDB or PostgreSQL), before any of the caller's query
logic; the Python functions here compute the same tokens and labels, for the tests and for data that
is already in Arrow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlglot import exp

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


def derive_key(master: bytes, purpose: str, domain: str) -> bytes:
    """The key of one purpose and join domain, derived from the silos' shared master secret."""
    info = f"fedlake pseudonym v2|{purpose}|{domain}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


TRIMMED = " "  # what normalization trims: spaces only (DuckDB's bare TRIM would trim Unicode spaces too)
_UPPER, _LOWER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"
_ASCII_LOWER = str.maketrans(_UPPER, _LOWER)


def normalize(value: str) -> str:
    """Trimmed and lower-cased in ASCII only, so that every engine normalizes text identically."""
    return value.strip(TRIMMED).translate(_ASCII_LOWER)


def pseudonym(value: object, key: bytes) -> str | None:
    return None if value is None else hmac.digest(key, normalize(str(value)).encode(), "sha256").hex()[:TOKEN_HEX_CHARS]


def pseudonymize(values: pa.Array | pa.ChunkedArray, key: bytes) -> pa.Array:
    """Tokens for values: HMAC-SHA256 of the normalized text; nulls stay null."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    text = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
    unique = pc.unique(text)
    tokens = pa.array([pseudonym(v, key) for v in unique.to_pylist()], pa.string())
    return pc.take(tokens, pc.index_in(text, unique))


def key_params(key: bytes, name: str) -> dict[str, bytes]:
    """The HMAC's inner and outer padded keys (RFC 2104), bound as query parameters so that no key
    material is ever part of the SQL text (which engines echo in errors and logs)."""
    block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
    return {f"{name}_i": bytes(b ^ 0x36 for b in block), f"{name}_o": bytes(b ^ 0x5C for b in block)}


def _call(name: str, *args: exp.Expression) -> exp.Expression:
    return exp.func(name, *args, dialect="duckdb")


def normalized_sql(value: exp.Expression) -> exp.Expression:
    """`normalize` in SQL. LOWER is ASCII lower-casing for ASCII text in every engine and ten times
    faster than TRANSLATE, which only text with other characters takes (byte length != length)."""
    trimmed = exp.Trim(this=exp.Cast(this=value, to=exp.DataType.build("VARCHAR")), expression=exp.Literal.string(TRIMMED))
    ascii_only = exp.EQ(this=exp.Anonymous(this="strlen", expressions=[trimmed.copy()]), expression=exp.Length(this=trimmed.copy()))
    folded = _call("translate", trimmed.copy(), exp.Literal.string(_UPPER), exp.Literal.string(_LOWER))
    return exp.Case(ifs=[exp.If(this=ascii_only, true=exp.Lower(this=trimmed))], default=folded)


def hmac_sql(value: exp.Expression, param: str) -> exp.Expression:
    """HMAC-SHA256 of the normalized value in SQL (DuckDB dialect; the PostgreSQL connector
    transpiles it), keyed by the parameters `key_params(key, param)` bind."""
    inner_key = exp.Cast(this=exp.Placeholder(this=f"{param}_i"), to=exp.DataType.build("BLOB"))
    outer_key = exp.Cast(this=exp.Placeholder(this=f"{param}_o"), to=exp.DataType.build("BLOB"))
    inner = _call("sha256", exp.DPipe(this=inner_key, expression=_call("encode", normalized_sql(value))))
    outer = _call("sha256", exp.DPipe(this=outer_key, expression=_call("unhex", inner)))
    return exp.Substring(this=outer, start=exp.Literal.number(1), length=exp.Literal.number(TOKEN_HEX_CHARS))


def generalize_sql(value: exp.Expression, spec: dict[str, Any]) -> exp.Expression:
    """The generalized value in SQL, the same labels `generalize` makes in Python."""
    method = spec["method"]
    if method == "prefix":
        return exp.Left(this=exp.Cast(this=value, to=exp.DataType.build("VARCHAR")), expression=exp.Literal.number(int(spec.get("length", 2))))
    if method == "age_band":
        width = int(spec.get("width", 10))
        as_of = dt.date.fromisoformat(str(spec.get("as_of", "2026-01-01")))
        month, day = exp.Month(this=value.copy()), exp.Day(this=value.copy())
        later = exp.or_(exp.GT(this=month, expression=exp.Literal.number(as_of.month)),
                        exp.and_(exp.EQ(this=month.copy(), expression=exp.Literal.number(as_of.month)),
                                 exp.GT(this=day, expression=exp.Literal.number(as_of.day))))
        before_birthday = exp.Case(ifs=[exp.If(this=later, true=exp.Literal.number(1))], default=exp.Literal.number(0))
        age = exp.Sub(this=exp.Sub(this=exp.Literal.number(as_of.year), expression=exp.Year(this=value.copy())), expression=before_birthday)
        low = exp.Cast(this=exp.Mul(this=exp.Floor(this=exp.Div(this=exp.paren(age), expression=exp.Literal.number(f"{width}.0"))),
                                    expression=exp.Literal.number(width)), to=exp.DataType.build("BIGINT"))
        high = exp.Add(this=low.copy(), expression=exp.Literal.number(width - 1))
        label = exp.DPipe(this=exp.DPipe(this=exp.Cast(this=low, to=exp.DataType.build("VARCHAR")), expression=exp.Literal.string("-")),
                          expression=exp.Cast(this=high, to=exp.DataType.build("VARCHAR")))
        return exp.Case(ifs=[exp.If(this=exp.Is(this=value.copy(), expression=exp.Null()), true=exp.Null())], default=label)
    raise FedlakeError(f"unknown generalization method {method!r}")


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
