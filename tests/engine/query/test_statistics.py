"""What the tables' statistics say about a cut query's fragments and its result."""

from __future__ import annotations

from fedlake.query.cut import cut_query
from fedlake.query.placement import result_rows, unique_columns
from fedlake.query.statistics import ColumnOrigin, TableStatistics, column_origins, fragment_distinct

SCHEMA = {
    "eu": {"orders": {"order_id": "BIGINT", "person_id": "BIGINT", "amount": "DOUBLE"},
           "people": {"id": "BIGINT", "region": "VARCHAR"}},
    "sg": {"payments": {"payment_id": "BIGINT", "order_id": "BIGINT", "method": "VARCHAR", "amount": "DOUBLE"}},
}
STATISTICS = {
    "eu": {"orders": TableStatistics(1_500_000, {"order_id": 1_500_000, "person_id": 100_000}),
           "people": TableStatistics(100_000, {"id": 100_000, "region": 4})},
    "sg": {"payments": TableStatistics(6_000_000, {"payment_id": 6_000_000, "order_id": 1_400_000, "method": 5})},
}


def test_a_fragment_column_has_the_origin_it_passes_through():
    assert column_origins('SELECT "o"."person_id" AS "who", "o"."amount" * 2 AS "twice" FROM "orders" AS "o"') == {
        "who": ColumnOrigin("orders", "person_id")}
    joined = ('SELECT "p"."region" AS "p__region", COUNT(*) AS "n" FROM "people" AS "p" CROSS JOIN "orders" AS "o" '
              'WHERE "o"."person_id" = "p"."id" GROUP BY "p"."region"')
    assert column_origins(joined) == {"p__region": ColumnOrigin("people", "region")}


def test_a_five_group_federated_result_is_estimated_at_five_rows():
    """Payments per method, joined to their orders in another silo: 5 rows, not the 6M payments."""
    sql = ("SELECT y.method, sum(o.amount) AS paid FROM eu.orders o JOIN sg.payments y ON y.order_id = o.order_id "
           "GROUP BY y.method")
    cut = cut_query(sql, SCHEMA, statistics=STATISTICS)
    estimates = {f.name: (1_500_000 if f.silo == "eu" else 6_000_000, unique_columns(f.sql)) for f in cut.fragments}
    distinct = fragment_distinct(cut.fragments, STATISTICS)
    payments = next(f for f in cut.fragments if f.silo == "sg")
    assert distinct[payments.name] == {"method": 5, "order_id": 1_400_000}
    assert result_rows(cut.residual, estimates, distinct) == 5
    assert result_rows(cut.residual, estimates) == 6_000_000
