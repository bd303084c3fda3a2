"""Masks compute the same values in every engine: the SQL HMAC and generalizations that run in
DuckDB and, transpiled, in PostgreSQL equal the Python functions; keys are separate per purpose and
per join domain, so tokens of one say nothing about another's."""

from __future__ import annotations

import datetime as dt
import hmac

import duckdb
import psycopg
import pyarrow as pa
import pytest
from sqlglot import exp

from fedlake.policy.transforms import (
    TOKEN_HEX_CHARS, derive_key, generalize, generalize_sql, hmac_sql, key_params, normalize, pseudonym, pseudonymize,
)
from fedlake.silos.postgres import to_postgres_sql

TEXT = [" DE000000123\t", "A B", "ÅSA İstanbul ", "x@Example.COM", "", None, "MiXeD\r\n", " Ünï ", "  "] + [f" ID{i:06d} " for i in range(300)]
DATES = [dt.date(1990, 1, 1), dt.date(1990, 1, 2), dt.date(2000, 6, 30), None, dt.date(1955, 12, 31), dt.date(2008, 2, 29)]
SPECS = [{"method": "age_band", "width": 10, "as_of": "2026-01-01"}, {"method": "age_band", "width": 5, "as_of": "2025-07-15"}]


def test_pseudonyms_are_the_keyed_hmac_of_the_normalized_text():
    key = derive_key(b"master", "aml", "account")
    expected = [None if v is None else hmac.new(key, normalize(v).encode(), "sha256").hexdigest()[:TOKEN_HEX_CHARS] for v in TEXT]
    assert pseudonymize(pa.array(TEXT, pa.string()), key).to_pylist() == expected
    assert normalize(" A b ") == "a b" and normalize("ÅSA") == "Åsa", "only ASCII letters are folded"
    assert normalize("\tX\n") == "\tx\n", "only spaces are trimmed, as TRIM does in every engine"


def test_keys_differ_per_purpose_and_domain_and_never_equal_the_master():
    master = b"one master secret for every silo"
    keys = {(p, d): derive_key(master, p, d) for p in ("aml", "analytics") for d in ("account", "eu_core.transactions.counterparty_account")}
    assert len(set(keys.values())) == 4 and master not in keys.values()
    assert derive_key(master, "aml", "account") == keys[("aml", "account")], "deterministic, so every silo agrees"
    assert pseudonym("ACC1", keys[("aml", "account")]) != pseudonym("ACC1", keys[("analytics", "account")])


def _duckdb(sql: str, table: pa.Table, params: dict | None = None) -> list:
    db = duckdb.connect()
    db.register("t", table)
    return [row[0] for row in db.execute(sql, params or {}).fetchall()]


def test_sql_pseudonyms_equal_python_in_duckdb():
    key = derive_key(b"master", "analytics", "customer")
    sql = exp.select(hmac_sql(exp.column("v"), "k").as_("h")).from_("t").sql("duckdb")
    got = _duckdb(sql, pa.table({"v": pa.array(TEXT, pa.string())}), key_params(key, "k"))
    assert got == [pseudonym(v, key) for v in TEXT]
    numbers = [1, 22, None, -7]
    sql = exp.select(hmac_sql(exp.column("v"), "k").as_("h")).from_("t").sql("duckdb")
    assert _duckdb(sql, pa.table({"v": pa.array(numbers, pa.int64())}), key_params(key, "k")) == [pseudonym(v, key) for v in numbers]


def test_long_keys_are_hashed_first_as_rfc_2104_says():
    key = b"k" * 100
    sql = exp.select(hmac_sql(exp.column("v"), "k").as_("h")).from_("t").sql("duckdb")
    assert _duckdb(sql, pa.table({"v": ["abc"]}), key_params(key, "k")) == [hmac.new(key, b"abc", "sha256").hexdigest()[:32]]


@pytest.mark.parametrize("spec", SPECS + [{"method": "prefix", "length": 2}], ids=["decades", "half-decades", "prefix"])
def test_sql_generalization_equals_python_in_duckdb(spec):
    values = pa.array(DATES, pa.date32()) if spec["method"] == "age_band" else pa.array(["75008", "1", None, "SW1A 1AA"])
    sql = exp.select(generalize_sql(exp.column("v"), spec).as_("g")).from_("t").sql("duckdb")
    assert _duckdb(sql, pa.table({"v": values})) == generalize(values, spec).to_pylist()


def test_masks_transpiled_to_postgresql_compute_the_same_values(postgres_dsn):
    """A silo with `engine: postgres` runs the masks in PostgreSQL itself: the same tokens and labels."""
    key = derive_key(b"master", "credit_scoring", "person")
    texts = [v for v in TEXT[:40]]
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE t (v text, d date)")
        with conn.cursor().copy("COPY t (v, d) FROM STDIN") as copy:
            for i, v in enumerate(texts):
                copy.write_row((v, DATES[i % len(DATES)]))
        token = exp.select(hmac_sql(exp.column("v"), "k").as_("h")).from_("t").sql("duckdb")
        rows = conn.execute(to_postgres_sql(token), key_params(key, "k")).fetchall()
        assert [r[0] for r in rows] == [pseudonym(v, key) for v in texts]
        for spec in SPECS:
            band = exp.select(generalize_sql(exp.column("d"), spec).as_("g")).from_("t").sql("duckdb")
            rows = conn.execute(to_postgres_sql(band)).fetchall()
            expected = generalize(pa.array([DATES[i % len(DATES)] for i in range(len(texts))], pa.date32()), spec).to_pylist()
            assert [r[0] for r in rows] == expected
