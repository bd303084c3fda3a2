"""Write and read times of one lake table: load, an in-silo materialization, a scan, and (where the
lake keeps versions) a read of the previous version. Rows as the first argument; `s3` as the second
runs on an S3 lake (moto's server on loopback, as in the tests) instead of a local folder.

    PYTHONPATH=. .venv/bin/python bench/lake_writes.py 2000000
    PYTHONPATH=. .venv/bin/python bench/lake_writes.py 2000000 s3

The same script runs against another checkout of fedlake (PYTHONPATH=<that checkout>) to compare
storage formats on one machine; each figure is the best of three runs.
"""

from __future__ import annotations

import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

from fedlake.silos import ParquetConnector, S3Connector


def table(rows: int) -> pa.Table:
    rng = np.random.default_rng(7)
    return pa.table({
        "txn_id": np.arange(rows, dtype=np.int64),
        "account_id": rng.integers(0, rows // 20 + 1, rows),
        "amount": rng.gamma(2.0, 150.0, rows).round(2),
        "currency": pa.array(rng.choice(["EUR", "USD", "SGD"], rows)),
        "ts": pa.array(np.datetime64("2024-01-01") + rng.integers(0, 86400 * 365, rows).astype("timedelta64[s]")),
    })


def best(runs: int, work) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(lake, data: pa.Table) -> None:
    figures = {
        "load": best(3, lambda: lake.load("txns", data.schema, data.to_batches(max_chunksize=65_536))),
        "materialize": best(3, lambda: lake.materialize(
            "by_account", "SELECT account_id, currency, count(*) AS n, sum(amount) AS total FROM txns GROUP BY 1, 2")),
        "scan": best(3, lambda: lake.execute("SELECT currency, sum(amount) AS s FROM txns GROUP BY 1").read_all()),
    }
    if hasattr(lake, "at_versions"):
        version = lake.table_version("txns")
        figures["scan of the previous version"] = best(
            3, lambda: lake.at_versions({"txns": version - 1}).execute("SELECT currency, sum(amount) AS s FROM txns GROUP BY 1").read_all())
    for name, seconds in figures.items():
        print(f"{name:<30} {seconds:8.3f} s")
    print(f"{'bytes of the table':<30} {lake.statistics('txns').bytes:>10,}")


def main(rows: int, kind: str) -> None:
    data = table(rows)
    if kind == "s3":
        from tests.services import create_bucket, s3_server

        with s3_server() as endpoint:
            create_bucket(endpoint, "fedlake-bench", "k", "s")
            measure(S3Connector("bench", "US", "fedlake-bench", "lake", endpoint, "us-east-1", "k", "s"), data)
        return
    with tempfile.TemporaryDirectory(prefix="fedlake-lake-bench-") as root:
        measure(ParquetConnector("bench", "EU", root), data)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000, sys.argv[2] if len(sys.argv) > 2 else "local")
