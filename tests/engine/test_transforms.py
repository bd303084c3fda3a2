"""Pseudonyms are the keyed HMAC-SHA256 of the trimmed, lower-cased text, whichever path computes them
(DuckDB for ASCII text, Python otherwise): the same subject gets the same token in every silo."""

from __future__ import annotations

import hmac

import pyarrow as pa
import pytest

from fedlake.policy.transforms import TOKEN_HEX_CHARS, pseudonymize


def expected(values: list, key: bytes) -> list:
    return [None if v is None else hmac.new(key, str(v).strip().lower().encode(), "sha256").hexdigest()[:TOKEN_HEX_CHARS]
            for v in values]


@pytest.mark.parametrize("key", [b"k", b"a-32-byte-key-for-the-pseudonyms", b"x" * 100], ids=["short", "32", "over-64"])
@pytest.mark.parametrize(
    "values",
    [
        [f" DE{i:09d}\t" for i in range(2000)] + [None, "", "  ", "A B", "\x1cAbC\x1f", "\x0bMiXeD\r\n"],
        ["Ünïcode ", "İstanbul", None, "abc", "ÅSA\u00a0"],
        [],
        [None, None],
    ],
    ids=["ascii", "unicode", "empty", "nulls"],
)
def test_pseudonyms_are_the_keyed_hmac_of_the_normalized_text(values, key):
    assert pseudonymize(pa.array(values, pa.string()), key).to_pylist() == expected(values, key)


def test_numbers_are_pseudonymized_as_their_text():
    values = [1, 22, None, 22]
    assert pseudonymize(pa.array(values, pa.int64()), b"k").to_pylist() == expected(values, b"k")
