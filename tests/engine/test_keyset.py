"""Semi-join key sets: no key is ever missed, the filter inside DuckDB keeps exactly what the
filter after an engine keeps, and a malformed key set from the network is refused."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from fedlake.errors import FedlakeError
from fedlake.keyset import KEY_BYTES, KeySet, filter_batches, filtered_sql, key_family, keys_if_they_pay


def test_keys_are_distinct_hashes_of_the_non_null_values():
    keys = KeySet.of(pa.chunked_array([["a", "b", None], ["a", "c"]]), "text")
    assert keys.keys == 3 and keys.nbytes == 3 * KEY_BYTES and keys.hashes.type == pa.uint64()
    assert KeySet.from_table(keys.to_table()) == keys


def test_the_filter_inside_duckdb_and_after_the_engine_keep_the_same_rows():
    rows = pa.table({"k": [f"key-{i}" for i in range(5000)] + [None], "v": list(range(5001))})
    wanted = pa.array([f"key-{i}" for i in range(0, 5000, 7)] + ["stranger"])
    keys = KeySet.of(wanted, "text")
    sql, params = filtered_sql("SELECT k, v FROM rows", [("k", keys, "__fl_s0")])
    db = duckdb.connect()
    db.register("rows", rows)
    inside = db.execute(sql, params).to_arrow_table()
    after = pa.Table.from_batches(list(filter_batches(iter(rows.to_batches(max_chunksize=700)), [("k", keys)])))
    expected = sorted(f"key-{i}" for i in range(0, 5000, 7))
    assert sorted(inside.column("k").to_pylist()) == expected == sorted(after.column("k").to_pylist())


def test_integer_keys_match_whatever_integer_width_each_side_has():
    keys = KeySet.of(pa.array([1, 5, 9], pa.int32()), "integer")
    probe = pa.table({"id": pa.array([1, 2, 5, 9, 10], pa.int64())})
    kept = pa.Table.from_batches(list(filter_batches(iter(probe.to_batches()), [("id", keys)])))
    assert kept.column("id").to_pylist() == [1, 5, 9]
    assert key_family(pa.int16()) == key_family(pa.int64()) == "integer" and key_family(pa.float64()) is None


def test_keys_that_would_cost_more_than_they_save_are_not_sent():
    values = pa.chunked_array([[f"k{i}" for i in range(1000)]])
    keys, why = keys_if_they_pay(values, 1000 * KEY_BYTES, "a.k = b.k")
    assert keys is not None and keys.keys == 1000 and why == ""
    keys, why = keys_if_they_pay(values, 100, "a.k = b.k")
    assert keys is None and "semi-join on a.k = b.k not used: 1000 keys (8000 bytes)" in why
    keys, why = keys_if_they_pay(pa.chunked_array([[1.5]]), 1e9, "a.x = b.x")
    assert keys is None and "not text or integers" in why


@pytest.mark.parametrize(
    "table",
    [
        pa.table({"h": pa.array([1], pa.uint64())}),  # no family
        pa.table({"h": pa.array([1], pa.int64())}, metadata={b"family": b"text"}),  # not uint64
        pa.table({"h": pa.array([1], pa.uint64()), "x": [1]}, metadata={b"family": b"text"}),  # another column
        pa.table({"h": pa.array([1], pa.uint64())}, metadata={b"family": b"blob"}),
    ],
)
def test_a_malformed_key_set_is_refused(table):
    with pytest.raises(FedlakeError, match="semi-join keys are one uint64 column 'h'"):
        KeySet.from_table(table)
