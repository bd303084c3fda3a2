"""Geo-split TPC-DS: DuckDB's 99 TPC-DS queries through fedlake over three silos, each compared with
the same data co-located in one DuckDB, in one run.

    make bench-tpcds SF=1                       # or: python bench/tpcds.py --sf 0.1 --queries 1,2,3

The split (bench/tpcds/silos.yaml): the store channel in eu_core (a real PostgreSQL server started
on loopback), the web and catalog channels in us_lake (a Parquet lake), inventory and the shared
dimensions in sg_lake (a Parquet lake). Every column is public and the policy allows everything, so
what is measured is federation itself. Each query is rewritten only to name its tables `silo.table`
(sqlglot); fedlake runs it with in-process agents in a worker process, killed and restarted when a
query passes its deadline ('timeout'). The co-located answer (the original query on DuckDB's own
tables) is the reference: a query is correct when fedlake returns the same multiset of rows (numbers
to a relative 1e-6), in the ORDER BY order where the keys are in the output, ties at a LIMIT allowed.
Ratios are fedlake's seconds over co-located DuckDB's; the geometric mean is over correct queries.
Bytes crossing are the Arrow bytes that left the silos (plan.bytes_crossing), against the result's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import duckdb_extensions
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fedlake.catalog import load_catalog  # noqa: E402
from tpcds_check import Verdict, compare, qualify_tables  # noqa: E402

CONFIG = REPO / "bench" / "tpcds"
PURPOSE = "analytics"
RESULT_PREFIX = "@@result "
EU_ENV = ("TPCDS_EU_CORE_DSN", "TPCDS_EU_CORE_WRITER_DSN", "TPCDS_EU_CORE_OWNER_DSN")


@dataclass
class QueryResult:
    query: int
    status: str  # correct, wrong, error, timeout
    detail: str
    duckdb_seconds: float
    fedlake_seconds: float | None = None
    rows: int | None = None
    result_bytes: int | None = None
    bytes_crossing: int | None = None

    @property
    def ratio(self) -> float | None:
        return None if self.fedlake_seconds is None else self.fedlake_seconds / max(self.duckdb_seconds, 1e-4)


def generated(sf: float) -> duckdb.DuckDBPyConnection:
    """TPC-DS at scale factor `sf` in an in-memory DuckDB (the co-located copy), from the wheel."""
    db = duckdb.connect(config={"autoinstall_known_extensions": False})
    duckdb_extensions.import_extension("tpcds", con=db)
    db.execute("LOAD tpcds")
    db.execute(f"CALL dsdgen(sf={sf})")
    return db


def name_as_silos(db: duckdb.DuckDBPyConnection, catalog) -> None:
    """Views `silo.table` over the co-located tables, so that the rewritten SQL runs there too."""
    for silo, spec in catalog.silos.items():
        db.execute(f"CREATE SCHEMA {silo}")
        for table in spec.tables:
            db.execute(f"CREATE VIEW {silo}.{table} AS SELECT * FROM main.{table}")


def load_silos(db: duckdb.DuckDBPyConnection, catalog, home: Path) -> dict[str, int]:
    """Every table into its silo, as its data owner would load it; rows per silo."""
    from fedlake.silos import open_silo

    loaded = {}
    for name, spec in catalog.silos.items():
        loaded[name] = 0
        with open_silo(spec, "local", home) as silo:
            for table in spec.tables:
                reader = db.execute(f"SELECT * FROM main.{table}").to_arrow_reader(200_000)
                loaded[name] += silo.load(table, reader.schema, reader)
    return loaded


class FederationWorker:
    """fedlake in a process of its own, so that a query past its deadline can be stopped whole."""

    def __init__(self, home: Path, env: dict[str, str]):
        self.home, self.env = home, env
        self.process: subprocess.Popen | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()

    def _start(self) -> None:
        log = open(self.home / "worker.log", "a")
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--home", str(self.home)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=self.env, cwd=REPO,
            start_new_session=True,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, args=(self.process.stdout, self.lines), daemon=True).start()
        ready = self._next(600)
        if ready is None or ready.get("ready") is not True:
            raise RuntimeError(f"the fedlake worker did not start; see {self.home / 'worker.log'}")

    @staticmethod
    def _read(stream, lines: queue.Queue) -> None:
        for line in stream:
            if line.startswith(RESULT_PREFIX):
                lines.put(line[len(RESULT_PREFIX):])
        lines.put(None)

    def _next(self, timeout: float) -> dict | None:
        line = self.lines.get(timeout=timeout)
        return None if line is None else json.loads(line)

    def run(self, number: int, sql: str, timeout: float) -> dict:
        """{seconds, rows, ...} or {error}; {timeout: True} when the deadline passed (the worker is
        killed, and the next query starts a fresh one)."""
        if self.process is None or self.process.poll() is not None:
            self._start()
        self.process.stdin.write(json.dumps({"query": number, "sql": sql}) + "\n")
        self.process.stdin.flush()
        try:
            answer = self._next(timeout)
        except queue.Empty:
            self.close()
            return {"timeout": True}
        if answer is None:
            self.close()
            return {"error": f"the worker died (exit {self.process.returncode if self.process else '?'}); see worker.log"}
        return answer

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


def worker_main(home: Path) -> int:
    """Build the agents and the federation once, then answer queries read from stdin, one a line."""
    from fedlake.agent import local_agent_client
    from fedlake.policy.model import load_policy
    from fedlake.query import Federation

    catalog = load_catalog(CONFIG / "silos.yaml")
    policy = load_policy(CONFIG / "policies.yaml", catalog)
    clients = {silo: local_agent_client(catalog, policy, silo, home) for silo in catalog.silos}
    federation = Federation(catalog, clients)
    for silo, spec in catalog.silos.items():  # open every silo's connections before timing
        federation.run(f"SELECT count(*) AS n FROM {silo}.{next(iter(spec.tables))}", PURPOSE)
    answers = home / "answers"
    answers.mkdir(exist_ok=True)
    print(RESULT_PREFIX + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        start = time.perf_counter()
        try:
            table, plan = federation.run(request["sql"], PURPOSE)
        except Exception as exc:  # one line per failure: the bench reports it and goes on
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            print(RESULT_PREFIX + json.dumps({"error": f"{type(exc).__name__}: {message}"[:300]}), flush=True)
            continue
        seconds = time.perf_counter() - start
        path = answers / f"q{request['query']}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        print(RESULT_PREFIX + json.dumps({
            "seconds": seconds, "rows": table.num_rows, "result_bytes": table.nbytes,
            "bytes_crossing": plan.bytes_crossing, "path": str(path),
        }), flush=True)
    return 0


def timed(db: duckdb.DuckDBPyConnection, sql: str) -> tuple[pa.Table, float]:
    start = time.perf_counter()
    table = db.execute(sql).to_arrow_table()
    return table, time.perf_counter() - start


def run_query(number: int, sql: str, db, silo_of: dict[str, str], worker: FederationWorker, timeout: float) -> QueryResult:
    """The reference is the rewritten SQL on the co-located tables (the same text fedlake gets, so
    that unaliased columns are named alike); a wrong answer is checked against the original SQL too,
    to tell an artefact of the rewrite from an engine's answer."""
    federated_sql = qualify_tables(sql, silo_of)
    expected, duck_seconds = timed(db, federated_sql)
    answer = worker.run(number, federated_sql, timeout)
    if answer.get("timeout"):
        return QueryResult(number, "timeout", f"no answer in {timeout:g} s", duck_seconds)
    if "error" in answer:
        return QueryResult(number, "error", answer["error"], duck_seconds)
    got = pa.ipc.open_file(answer["path"]).read_all()
    verdict = compare(federated_sql, expected, got)
    if not verdict.correct:
        original = db.execute(sql).to_arrow_table().rename_columns(expected.column_names)
        faithful = compare(federated_sql, original, expected)
        if not faithful.correct:
            verdict = Verdict(False, f"the rewrite itself changes the answer: {faithful.detail}")
    return QueryResult(
        number, "correct" if verdict.correct else "wrong", verdict.detail, duck_seconds, answer["seconds"],
        answer["rows"], answer["result_bytes"], answer["bytes_crossing"],
    )


def summary(results: list[QueryResult]) -> dict:
    counts = {s: sum(r.status == s for r in results) for s in ("correct", "wrong", "error", "timeout")}
    correct = [r for r in results if r.status == "correct"]
    ratios = [r.ratio for r in correct]
    return {
        **counts,
        "named_differently": sum("named differently" in r.detail for r in correct),
        "geomean_ratio": math.exp(sum(math.log(x) for x in ratios) / len(ratios)) if ratios else None,
        "total_ratio": (sum(r.fedlake_seconds for r in correct) / sum(r.duckdb_seconds for r in correct)) if correct else None,
        "bytes_crossing": sum(r.bytes_crossing or 0 for r in correct),
        "result_bytes": sum(r.result_bytes or 0 for r in correct),
    }


def print_table(sf: float, results: list[QueryResult], totals: dict) -> None:
    print(f"geo-split TPC-DS, SF {sf:g}, {os.cpu_count()} cores: eu_core (PostgreSQL) store channel, "
          "us_lake web+catalog, sg_lake dimensions+inventory")
    print(f"{'q':>3} {'status':<8} {'duckdb s':>9} {'fedlake s':>9} {'x':>7} {'rows':>6} {'crossing':>12} {'result':>10}  detail")
    for r in results:
        fed = "" if r.fedlake_seconds is None else f"{r.fedlake_seconds:.3f}"
        ratio = "" if r.ratio is None else f"{r.ratio:.1f}"
        crossing = "" if r.bytes_crossing is None else f"{r.bytes_crossing:,}"
        result = "" if r.result_bytes is None else f"{r.result_bytes:,}"
        rows = "" if r.rows is None else r.rows
        detail = r.detail[:110]
        print(f"{r.query:>3} {r.status:<8} {r.duckdb_seconds:>9.3f} {fed:>9} {ratio:>7} {rows:>6} {crossing:>12} {result:>10}  {detail}")
    geo, total = (("n/a" if totals[k] is None else f"{totals[k]:.2f}") for k in ("geomean_ratio", "total_ratio"))
    print(f"correct {totals['correct']}, wrong {totals['wrong']}, error {totals['error']}, timeout {totals['timeout']} "
          f"of {len(results)} ({totals['named_differently']} correct ones name columns otherwise than DuckDB); geometric mean {geo}x co-located over correct queries, total time {total}x; "
          f"bytes crossing {totals['bytes_crossing']:,} for {totals['result_bytes']:,} result bytes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sf", type=float, default=1.0, help="TPC-DS scale factor (1 = about 1 GB)")
    parser.add_argument("--queries", help="comma-separated query numbers (default: all 99)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds fedlake may take per query")
    parser.add_argument("--keep", action="store_true", help="keep the generated silos' data folder")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args.home)

    from tests.services import postgres_server, silo_role_dsns

    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix=f"tpcds-sf{args.sf:g}-", dir=results_dir))
    catalog = load_catalog(CONFIG / "silos.yaml")
    silo_of = {table: silo for silo, spec in catalog.silos.items() for table in spec.tables}
    started = time.perf_counter()
    db = generated(args.sf)
    name_as_silos(db, catalog)
    queries = db.execute("SELECT query_nr, query FROM tpcds_queries() ORDER BY query_nr").fetchall()
    if args.queries:
        wanted = {int(q) for q in args.queries.split(",")}
        queries = [(n, q) for n, q in queries if n in wanted]
    with ExitStack() as stack:
        (home / "postgres").mkdir()
        owner_dsn = stack.enter_context(postgres_server(home / "postgres"))
        reader_dsn, writer_dsn = silo_role_dsns(owner_dsn, "eu_core")
        env = dict(zip(EU_ENV, (reader_dsn, writer_dsn, owner_dsn)))
        os.environ.update(env)
        rows = load_silos(db, catalog, home)
        print(f"generated SF {args.sf:g} and loaded {rows} rows into the silos in {time.perf_counter() - started:.0f} s", flush=True)
        worker_env = {k: v for k, v in os.environ.items() if k != "FEDLAKE_LEDGER"}
        worker = FederationWorker(home, {**worker_env, **env, "FEDLAKE_HOME": str(home)})
        stack.callback(worker.close)
        results = []
        for number, sql in queries:
            result = run_query(number, sql, db, silo_of, worker, args.timeout)
            results.append(result)
            print(f"q{number}: {result.status} {'' if result.ratio is None else f'{result.ratio:.1f}x '}{'' if result.status == 'correct' else result.detail[:160]}", flush=True)
    totals = summary(results)
    out = results_dir / f"tpcds-sf{args.sf:g}.json"
    out.write_text(json.dumps({
        "sf": args.sf, "cores": os.cpu_count(), "timeout_s": args.timeout, "summary": totals,
        "queries": [{**asdict(r), "ratio": r.ratio} for r in results],
    }, indent=1))
    print_table(args.sf, results, totals)
    print(f"written to {out.relative_to(REPO)}")
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
