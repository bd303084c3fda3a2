"""Memo text to hashed character n-gram ids: the text encoder's input, computed inside a silo.

Hashing (rather than a vocabulary) means no word list is ever built from one silo's memos and
shipped to another: every silo maps the same n-gram to the same bucket on its own. crc32 is used
instead of Python's hash(), which is salted per process.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

NGRAM_SIZES = (3, 4, 5)
EMPTY_TEXT = "\x00empty"
_DIGITS = re.compile(r"\d")
_SPACES = re.compile(r"\s+")


def normalize(memo: str) -> str:
    """Lowercase, digits to 0, one space: references and dates carry no signal, their shape may."""
    return _SPACES.sub(" ", _DIGITS.sub("0", memo.lower())).strip()


def ngram_ids(memo: str, buckets: int) -> set[int]:
    """The distinct bucket ids of a memo's words and character n-grams (words padded with spaces)."""
    text = normalize(memo)
    ids: set[int] = set()
    for word in text.split(" "):
        if not word:
            continue
        ids.add(zlib.crc32(b"w:" + word.encode()) % buckets)
        padded = f" {word} ".encode()
        for n in NGRAM_SIZES:
            for i in range(max(1, len(padded) - n + 1)):
                ids.add(zlib.crc32(padded[i : i + n]) % buckets)
    return ids


class TextHasher:
    """Bags of distinct n-gram ids per document, caching each distinct memo (most memos repeat)."""

    def __init__(self, buckets: int):
        self.buckets = buckets
        self._cache: dict[str, set[int]] = {}
        self._empty = zlib.crc32(EMPTY_TEXT.encode()) % buckets

    def memo(self, memo: str) -> set[int]:
        found = self._cache.get(memo)
        if found is None:
            found = self._cache[memo] = ngram_ids(memo, self.buckets)
        return found

    def bags(self, documents: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, offsets) for nn.EmbeddingBag: distinct ids per document, so that a memo repeated a
        hundred times weighs as much as one (and Opacus's per-sample gradient of a bag is exact)."""
        chunks: list[np.ndarray] = []
        offsets = np.zeros(len(documents), dtype=np.int64)
        position = 0
        for i, memos in enumerate(documents):
            ids: set[int] = set()
            for memo in memos:
                ids |= self.memo(memo)
            chunk = np.fromiter(sorted(ids), dtype=np.int64, count=len(ids)) if ids else np.array([self._empty], dtype=np.int64)
            offsets[i] = position
            position += len(chunk)
            chunks.append(chunk)
        ids_all = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
        return ids_all, offsets
