"""A lake silo on Spark (`engine: spark`): every query shape of the federated-query suite, with the
sg lake's fragments run as Spark SQL on a real local Spark, returns what the same SQL returns on
co-located copies in DuckDB; the masks' pseudonyms computed by Spark are DuckDB's and Python's
tokens; a denied column stays denied. One Spark session serves the whole module (and process)."""

from __future__ import annotations

import pyarrow as pa
import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlglot import exp

from fedlake.catalog import load_catalog
from fedlake.errors import ConfigError, FedlakeError
from fedlake.policy.transforms import derive_key, hmac_sql, key_params, pseudonym
from fedlake.silos import open_silo
from fedlake.silos.spark import SparkLake
from tests.engine.test_federated_query import (
    ALLOW_ALL, KINDS as FEDERATED_KINDS, QUERIES, federation_under, load_silos, normalized, random_tables, write_catalog,
)

SPARK = "us"  # the silo on Spark: the lake most of the query shapes read (the local stand-in of an S3 lake)
KINDS = {**FEDERATED_KINDS, SPARK: ("s3", "US", {"path": "us_lake", "engine": "spark", "spark_master": "local[2]"})}
SHAPES = [q for q in QUERIES if f"{SPARK}." in q]


@pytest.fixture(scope="module")
def silos(tmp_path_factory):
    return load_silos(tmp_path_factory.mktemp("spark_silo"), KINDS)


@pytest.fixture(scope="module")
def federation(silos):
    fed, clients = federation_under(silos, ALLOW_ALL)
    yield fed, fed.clients, silos[2]
    for c in clients:
        c.close()


def test_most_query_shapes_read_the_spark_silo():
    assert len(SHAPES) >= 30


@pytest.mark.parametrize("sql", SHAPES, ids=[f"q{QUERIES.index(q):02d}" for q in SHAPES])
def test_spark_silo_result_equals_colocated(federation, sql):
    fed, clients, colocated = federation
    spark = clients[SPARK].agent.connector
    before = spark.egress.snapshot()
    expected = colocated.execute(sql).fetch_arrow_table()
    got, plan = fed.run(sql, "analytics")
    assert got.column_names == expected.column_names
    assert normalized(got) == normalized(expected)
    # what the silo sent came out of Spark (semi-join keys filter its batches after): no fragment ran elsewhere
    sent = sum(r.rows for r in plan.runs if r.fragment.silo == SPARK)
    assert spark.egress.snapshot()[0] - before[0] >= sent and (sent == 0 or spark.egress.snapshot()[0] > before[0])


def test_the_silo_is_on_spark_and_its_lake_duckdb_sends_nothing(federation):
    _, clients, _ = federation
    connector = clients[SPARK].agent.connector
    assert isinstance(connector, SparkLake) and connector.master == "local[2]"
    assert connector.egress.rows > 0 and connector.lake.egress.rows == 0


# -- pseudonyms: Spark's keyed HMAC is DuckDB's and Python's token ------------------------------

TRICKY = st.one_of(
    st.none(),
    st.text(max_size=24),
    st.text(alphabet=" \t\nAaZzÉéßİıΣσ日本😀\u00a0\u200b'\"\\%_", max_size=16),
    st.sampled_from(["", " ", "  Alice ", "ALICE", "İstanbul", "ǅ", "a\u0301", "\x00", "ﬁ"]),
)


def _tokens_sql(column: str, param: str) -> str:
    return exp.select(exp.alias_(hmac_sql(exp.column(column, quoted=True), param), "t")).from_(exp.table_("tokens", quoted=True)).sql("duckdb")


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(TRICKY, min_size=1, max_size=300), domain=st.sampled_from(["person", "account"]))
def test_spark_pseudonyms_equal_duckdb_and_python(silos, values, domain):
    home, catalog, _ = silos
    key = derive_key(b"master secret of every silo", "analytics", domain)
    params = key_params(key, "__fl_kt")
    table = pa.table({"id": pa.array(range(len(values)), pa.int64()), "v": pa.array(values, pa.string())})
    sql = _tokens_sql("v", "__fl_kt").replace(' FROM "tokens"', ', "id" FROM "tokens" ORDER BY "id"')
    with open_silo(catalog.silo(SPARK), "local", home) as spark:
        spark.load("tokens", table.schema, [table.to_batches()[0]] if table.num_rows else [])
        from_spark = spark.execute(sql, params=params).read_all().column("t").to_pylist()
        from_duckdb = spark.lake.execute(sql, params=params).read_all().column("t").to_pylist()
        spark.drop("tokens")
    assert from_spark == from_duckdb == [pseudonym(v, key) for v in values]


# -- the gate and the masks apply on Spark as on DuckDB -----------------------------------------

def test_a_denied_column_stays_denied_on_spark(silos):
    """The masks bind before Spark sees the statement: a denied column is absent from the relation
    Spark runs over, whichever clause names it."""
    home, _, _ = silos
    raw = yaml.safe_load((home / "silos.yaml").read_text())
    raw["silos"][SPARK]["tables"]["visits"]["duration"] = "financial"
    (home / "silos-denied.yaml").write_text(yaml.safe_dump(raw))
    policy = {"classifications": {"public": [{"action": "allow"}], "financial": [{"action": "deny"}]}}
    fed, clients = federation_under((home, load_catalog(home / "silos-denied.yaml"), None), policy)
    try:
        for attack in (
            "SELECT duration FROM us.visits",
            "SELECT visit_id FROM us.visits WHERE duration > 1800",
            "SELECT visit_id FROM us.visits ORDER BY duration DESC LIMIT 1",
            "SELECT channel, count(*) AS n FROM us.visits GROUP BY channel HAVING max(duration) > 3000",
            "SELECT p.id FROM eu.people p JOIN us.visits v ON v.person_id = p.id AND v.duration = p.id",
        ):
            with pytest.raises(FedlakeError, match="duration") as denied:
                fed.run(attack, "analytics")
            assert "denied" in str(denied.value).lower() and "\n" not in str(denied.value).splitlines()[0]
        got, _ = fed.run("SELECT channel, count(*) AS n FROM us.visits GROUP BY channel", "analytics")
        assert got.num_rows == 3 and isinstance(fed.clients[SPARK].agent.connector, SparkLake)
    finally:
        for c in clients:
            c.close()


def test_spark_refuses_a_bucket_and_a_missing_master(silos):
    home, _, _ = silos
    tables = {"sg": random_tables()["sg"]}
    for connection, problem in (
        ({"bucket": "b", "engine": "spark", "spark_master": "local[2]"}, "hadoop-aws"),
        ({"path": "x", "engine": "spark"}, "spark_master"),
        ({"path": "x", "engine": "spark", "spark_master": "yarn"}, "spark_master"),
        ({"path": "x", "engine": "postgres"}, "engine"),
    ):
        kind = "s3" if "bucket" in connection else "parquet"
        (home / "bad").mkdir(exist_ok=True)
        path = write_catalog(home / "bad", {"sg": (kind, "SG", connection)}, tables)
        with pytest.raises(ConfigError, match=problem) as refused:
            open_silo(load_catalog(path).silo("sg"), "local", home)
        assert "\n" not in str(refused.value)
