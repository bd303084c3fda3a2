"""Which examples a silo builds for which AML model: hashed n-gram bags for the light baseline,
tokenized memo texts for the pretrained encoder. Both come from the same in-silo aggregate."""

from __future__ import annotations

from collections.abc import Hashable

from fedlake.learning.data import AMLData, aml_examples
from fedlake.learning.memo_text import MemoTextData, memo_text_examples
from fedlake.learning.models import ModelSpec
from fedlake.silos.base import Connector


def examples_key(spec: ModelSpec) -> Hashable:
    """What the examples depend on besides the data: two specs with the same key share them."""
    if spec.kind == "aml_minilm":
        return ("memo_text", spec.params["encoder"], spec.params["max_tokens"])
    return ("ngram", spec.params["buckets"])


def silo_examples(connector: Connector, spec: ModelSpec, domestic_countries: tuple[str, ...], fingerprint: str | None = None) -> AMLData | MemoTextData:
    if spec.kind == "aml_minilm":
        return memo_text_examples(connector, spec.params["max_tokens"], spec.params["encoder"], domestic_countries, fingerprint)
    return aml_examples(connector, spec.params["buckets"], domestic_countries, fingerprint)
