"""Semi-join key sets: no key is ever missed, few others pass, the filter inside DuckDB keeps
exactly what the filter after an engine keeps, and a malformed key set from the network is refused."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from fedlake.errors import FedlakeError
from fedlake.keyset import KeySet, filter_batches, filtered_sql, key_family, keys_if_they_pay, keyset_bytes


def test_a_key_set_is_a_bloom_filter_of_the_distinct_non_null_values():
    keys = KeySet.of(pa.chunked_array([["a", "b", None], ["a", "c"]]), "text")
    assert keys.keys == 3 and keys.nbytes == keyset_bytes(3) == 8 and keys.words.type == pa.uint64()
    assert KeySet.from_table(keys.to_table()) == keys
    assert keys.to_table().nbytes == keys.nbytes  # what is counted is what crosses
    # about 1.2 bytes a key, where the keys' 64-bit hashes cost 8
    assert keyset_bytes(10_000) == KeySet.of(pa.array([f"k{i}" for i in range(10_000)]), "text").nbytes < 1.25 * 10_000


def test_the_filter_inside_duckdb_and_after_the_engine_keep_the_same_rows():
    rows = pa.table({"k": [f"key-{i}" for i in range(5000)] + [None], "v": list(range(5001))})
    wanted = pa.array([f"key-{i}" for i in range(0, 5000, 7)] + ["stranger"])
    keys = KeySet.of(wanted, "text")
    sql, params = filtered_sql("SELECT k, v FROM rows", [("k", keys, "__fl_s0")])
    db = duckdb.connect()
    db.register("rows", rows)
    inside = db.execute(sql, params).to_arrow_table()
    after = pa.Table.from_batches(list(filter_batches(iter(rows.to_batches(max_chunksize=700)), [("k", keys)])))
    expected = {f"key-{i}" for i in range(0, 5000, 7)}
    kept = sorted(inside.column("k").to_pylist())
    assert kept == sorted(after.column("k").to_pylist())
    assert expected <= set(kept), "a Bloom filter never drops a key"
    assert len(set(kept) - expected) < 0.02 * (5000 - len(expected)), "about 1 % of the others pass"
    assert inside.schema.names == ["k", "v"]


def test_integer_keys_match_whatever_integer_width_each_side_has():
    keys = KeySet.of(pa.array([1, 5, 9], pa.int32()), "integer")
    probe = pa.table({"id": pa.array([1, 2, 5, 9, 10], pa.int64())})
    kept = pa.Table.from_batches(list(filter_batches(iter(probe.to_batches()), [("id", keys)])))
    assert {1, 5, 9} <= set(kept.column("id").to_pylist())
    assert KeySet.of(pa.array([7], pa.int8()), "integer") == KeySet.of(pa.array([7], pa.int64()), "integer")
    assert key_family(pa.int16()) == key_family(pa.int64()) == "integer" and key_family(pa.float64()) is None


def test_keys_that_would_cost_more_than_they_save_are_not_sent():
    values = pa.chunked_array([[f"k{i}" for i in range(1000)]])
    keys, why = keys_if_they_pay(values, keyset_bytes(1000), "a.k = b.k")
    assert keys is not None and keys.keys == 1000 and why == ""
    keys, why = keys_if_they_pay(values, 100, "a.k = b.k")
    assert keys is None and f"semi-join on a.k = b.k not used: 1000 keys ({keyset_bytes(1000)} bytes)" in why
    keys, why = keys_if_they_pay(pa.chunked_array([[1.5]]), 1e9, "a.x = b.x")
    assert keys is None and "not text or integers" in why


GOOD = {b"family": b"text", b"keys": b"1", b"probes": b"7"}


@pytest.mark.parametrize(
    "table",
    [
        pa.table({"bits": pa.array([1], pa.uint64())}, metadata={b"keys": b"1", b"probes": b"7"}),  # no family
        pa.table({"bits": pa.array([1], pa.int64())}, metadata={**GOOD, b"family": b"text"}),  # not uint64
        pa.table({"bits": pa.array([1], pa.uint64()), "x": [1]}, metadata=GOOD),  # another column
        pa.table({"bits": pa.array([1], pa.uint64())}, metadata={**GOOD, b"family": b"blob"}),
        pa.table({"bits": pa.array([], pa.uint64())}, metadata=GOOD),  # no bits
        pa.table({"bits": pa.array([1, None], pa.uint64())}, metadata=GOOD),  # a null word
        pa.table({"bits": pa.array([1], pa.uint64())}, metadata={**GOOD, b"probes": b"0"}),
        pa.table({"bits": pa.array([1], pa.uint64())}, metadata={**GOOD, b"probes": b"99"}),
        pa.table({"bits": pa.array([1], pa.uint64())}, metadata={**GOOD, b"keys": b"-1"}),
        pa.table({"h": pa.array([1], pa.uint64())}, metadata={b"family": b"text"}),  # the former 64-bit hashes
    ],
)
def test_a_malformed_key_set_is_refused(table):
    with pytest.raises(FedlakeError, match="semi-join keys are a Bloom filter"):
        KeySet.from_table(table)
