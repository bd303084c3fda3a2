"""Bloom filters of join keys: no key is ever missed, few strangers pass, and a malformed one is refused."""

from __future__ import annotations

import pyarrow as pa
import pytest

from fedlake.bloom import BloomFilter, key_family
from fedlake.errors import FedlakeError
from fedlake.policy.transforms import pseudonymize


def test_every_key_passes_and_about_one_percent_of_strangers():
    keys = pseudonymize(pa.array([f"DE{i:09d}" for i in range(20_000)]), b"k")
    strangers = pseudonymize(pa.array([f"FR{i:09d}" for i in range(50_000)]), b"k")
    bloom = BloomFilter.from_dict(BloomFilter.of(keys, "text").to_dict())
    assert bloom.keys == 20_000 and bloom.nbytes < 1.3 * 20_000
    assert all(bloom.may_contain(keys).to_pylist())
    passed = sum(bloom.may_contain(strangers).to_pylist()) / len(strangers)
    assert passed < 0.02


def test_integer_keys_match_across_widths_and_nulls_never_pass():
    bloom = BloomFilter.of(pa.array([1, 5, None, 9], pa.int32()), "integer")
    assert bloom.keys == 3
    probe = pa.array([5, 9, None, 1, 1_000_000], pa.int64())
    assert bloom.may_contain(probe).to_pylist()[:4] == [True, True, False, True]


def test_key_families():
    assert key_family(pa.string()) == "text" and key_family(pa.large_string()) == "text"
    assert key_family(pa.int16()) == "integer"
    assert key_family(pa.float64()) is None and key_family(pa.timestamp("us")) is None


@pytest.mark.parametrize("change", [
    {"data": "not base64!"}, {"family": "float"}, {"bits": 10**9}, {"hashes": 0}, {"keys": None},
])
def test_a_malformed_filter_is_refused(change):
    raw = {**BloomFilter.of(pa.array(["a", "b"]), "text").to_dict(), **change}
    with pytest.raises(FedlakeError, match="malformed semi-join filter"):
        BloomFilter.from_dict(raw)
