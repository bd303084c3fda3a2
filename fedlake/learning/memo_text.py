"""AML examples for the pretrained encoder: each account's memos as one tokenized text, built in
the silo from its own tables, next to the same numeric behaviour the n-gram model sees.

An account's text is its distinct memos (normalized as for the n-gram model), the ones rarest in
the silo first, cut at max_tokens: "salary" on every account says little, a memo few accounts
write is where an unusual payment shows. The frequencies are counted inside the silo and stay
there with the memos; only the trained adapter and head weights leave.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

from fedlake.learning.data import MEMO_SEPARATOR, aml_numeric, aml_sql, data_fingerprint
from fedlake.learning.encoder import load_encoder
from fedlake.learning.text import normalize
from fedlake.silos.base import Connector

MEMO_JOINER = " ; "


@dataclass
class MemoTextData:
    """One silo's accounts as encoder inputs. Never serialized: it lives in the agent's process."""

    account_ids: np.ndarray  # object array of str
    numeric: np.ndarray  # float32 [n, len(AML_FEATURES)]
    input_ids: np.ndarray  # int64 [n, max_tokens], padded
    attention_mask: np.ndarray  # int64 [n, max_tokens]
    labels: np.ndarray  # float32 [n]
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.numeric[index], self.input_ids[index], self.attention_mask[index]

    def subset(self, mask: np.ndarray) -> MemoTextData:
        return MemoTextData(self.account_ids[mask], self.numeric[mask], self.input_ids[mask],
                            self.attention_mask[mask], self.labels[mask], self.fingerprint)

    @property
    def tokens(self) -> int:
        """Tokens the encoder reads for one pass over these accounts (padding excluded)."""
        return int(self.attention_mask.sum())

    @staticmethod
    def concat(parts: list[MemoTextData]) -> MemoTextData:
        """Pooling, which only the benchmark's centralised ceiling may do."""
        return MemoTextData(
            np.concatenate([p.account_ids for p in parts]),
            np.concatenate([p.numeric for p in parts]),
            np.concatenate([p.input_ids for p in parts]),
            np.concatenate([p.attention_mask for p in parts]),
            np.concatenate([p.labels for p in parts]),
            hashlib.sha256("".join(p.fingerprint for p in parts).encode()).hexdigest(),
        )


def account_texts(memo_lists: list[list[str]]) -> list[str]:
    """Per account: its distinct normalized memos, rarest in the silo first (ties by text)."""
    distinct = [sorted({normalize(m) for m in memos if m and m.strip()}) for memos in memo_lists]
    frequency = Counter(m for memos in distinct for m in memos)
    return [MEMO_JOINER.join(sorted(memos, key=lambda m: (frequency[m], m))) for memos in distinct]


def tokenize(texts: list[str], max_tokens: int, encoder: str) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 [n, max_tokens]; an empty text is [CLS] [SEP]."""
    tokenizer = load_encoder(encoder).tokenizer
    encoded = tokenizer(texts, truncation=True, max_length=max_tokens, padding="max_length", return_tensors="np")
    return encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)


def memo_text_examples(
    connector: Connector, max_tokens: int, encoder: str, domestic_countries: tuple[str, ...] = (), fingerprint: str | None = None
) -> MemoTextData:
    """Every account of the silo, computed in place: the same aggregate statement as the n-gram
    model's examples, its memos tokenized here."""
    rows = connector.execute(aml_sql(domestic_countries)).read_all()
    memos = rows.column("memos").to_pylist()
    input_ids, attention_mask = tokenize(account_texts([m.split(MEMO_SEPARATOR) if m else [] for m in memos]), max_tokens, encoder)
    return MemoTextData(
        account_ids=np.asarray(rows.column("account_id").to_pylist(), dtype=object),
        numeric=aml_numeric(rows),
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=np.asarray(rows.column("label").to_numpy(zero_copy_only=False), dtype=np.float32),
        fingerprint=fingerprint if fingerprint is not None else data_fingerprint(connector),
    )
