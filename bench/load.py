"""Concurrent federated queries from one coordinator against the demo bank's agents as Flight
processes (TLS on loopback): N = 1, 10, 25, 50 at once, every answer checked against a sequential
run, throughput against running the same queries one after another, p50/p99 latency, failures.

    make bench-load SCALE=1            # or: python bench/load.py --scale 0.2 --levels 1,10 --deadline 60

Each level runs in a coordinator process of its own, with fresh agent processes, so that a level
that stalls neither hangs the bench nor slows the next: every query has a deadline (the Flight call
timeout and the level's wait), and a query with no answer by then is reported as stalled. The mix:
the credit workload's feature query (bench/credit_features.py) and join/aggregate queries across
the three silos, all for the credit_scoring purpose, whose policy lets the columns they read out
as pseudonyms or as they are (no differentially private noise, so answers repeat exactly).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from assets.governed import credit_features_sql  # noqa: E402
from credit_features import start_agents  # noqa: E402
from fedlake.catalog import load_catalog  # noqa: E402
from tpcds_check import compare  # noqa: E402

PURPOSE = "credit_scoring"
LINE_PREFIX = "@@load "


def query_mix(catalog) -> list[str]:
    """The workload: the credit features, and queries that join and aggregate across silos."""
    union = " UNION ALL ".join(f"SELECT channel, direction, amount FROM {s}.transactions" for s in ("eu_core", "us_lake", "sg_lake"))
    return [
        credit_features_sql(catalog, "eu_core"),
        f"SELECT channel, direction, count(*) AS n, sum(amount) AS total FROM ({union}) t GROUP BY channel, direction",
        "SELECT l.purpose, count(*) AS loans, count(DISTINCT a.account_id) AS us_accounts FROM eu_core.loans l "
        "JOIN us_lake.accounts a ON a.customer_id = l.customer_id GROUP BY l.purpose",
        "SELECT c.home_region, a.account_type, count(*) AS accounts FROM sg_lake.accounts a "
        "JOIN eu_core.customers c ON c.customer_id = a.customer_id GROUP BY 1, 2",
        "SELECT t.merchant_category, count(*) AS n, avg(t.amount) AS mean FROM us_lake.transactions t "
        "WHERE t.account_id IN (SELECT account_id FROM us_lake.accounts WHERE account_type = 'credit_card') "
        "GROUP BY t.merchant_category",
        "SELECT l.loan_id, l.defaulted, c.income FROM eu_core.loans l JOIN eu_core.customers c ON c.customer_id = l.customer_id "
        "WHERE c.national_id IN (SELECT national_id FROM sg_lake.customers) ORDER BY l.loan_id",
    ]


@dataclass
class Outcome:
    slot: int  # which of the level's queries
    index: int  # which query of the mix
    status: str  # answered (not yet checked), correct, wrong, failed; stalled where no line came
    seconds: float | None
    detail: str = ""


def coordinator(home: Path, locations: dict[str, str], level: int, deadline: float, answers: Path) -> None:
    """One coordinator process: `level` queries at once (level 0: each query of the mix once, one
    after another, writing the reference answers). A line on stdout as each query ends, then one
    with the wall time, then the verdicts (checked after the clock stops)."""
    from fedlake.agent import FlightAgentClient, client_token
    from fedlake.policy.model import load_policy
    from fedlake.query import Federation

    catalog = load_catalog(REPO / "silos.yaml")
    policy = load_policy(REPO / "policies.yaml", catalog)
    token = client_token(policy, "coordinator", "local", home)
    clients = {s: FlightAgentClient(s, locations[s], token, home / "tls" / "ca.pem", timeout=deadline) for s in catalog.silos}
    federation = Federation(catalog, clients)
    mix = query_mix(catalog)
    lock = threading.Lock()
    tables: dict[int, pa.Table] = {}

    def report(record: dict) -> None:
        with lock:
            print(LINE_PREFIX + json.dumps(record), flush=True)

    def one(slot: int) -> None:
        index = slot % len(mix)
        start = time.perf_counter()
        try:
            tables[slot], _ = federation.run(mix[index], PURPOSE)
        except Exception as exc:  # reported, one line, and the others go on
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            report(asdict(Outcome(slot, index, "failed", time.perf_counter() - start, f"{type(exc).__name__}: {text}"[:300])))
            return
        report(asdict(Outcome(slot, index, "answered", time.perf_counter() - start)))

    federation.run("SELECT count(*) AS n FROM eu_core.loans", PURPOSE)  # connections open before timing
    start = time.perf_counter()
    if level == 0:
        for slot in range(len(mix)):
            one(slot)
    else:
        with ThreadPoolExecutor(max_workers=level) as pool:
            for slot in range(level):
                pool.submit(one, slot)
    report({"wall": time.perf_counter() - start})
    for slot, table in sorted(tables.items()):
        reference = answers / f"q{slot % len(mix)}.arrow"
        if level == 0:
            with pa.OSFile(str(reference), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            report({"slot": slot, "status": "correct", "detail": "reference"})
            continue
        verdict = compare(mix[slot % len(mix)], pa.ipc.open_file(str(reference)).read_all(), table)
        report({"slot": slot, "status": "correct" if verdict.correct else "wrong", "detail": "" if verdict.correct else verdict.detail})


def run_level(home: Path, catalog, tls: dict[str, Path], level: int, deadline: float) -> tuple[list[Outcome], float | None]:
    """A coordinator process for one level, against fresh agents; what it reported by the deadline."""
    agents, locations = start_agents(catalog, home, tls)
    wall = None
    try:
        process = subprocess.Popen(
            [sys.executable, __file__, "--coordinator", str(level), "--home", str(home), "--deadline", str(deadline),
             "--locations", json.dumps(locations)],
            stdout=subprocess.PIPE, stderr=open(home / f"coordinator-{level}.log", "w"), text=True, cwd=REPO,
            env={**os.environ, "FEDLAKE_HOME": str(home)},
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
        reader.start()
        reader.join(deadline * (len(query_mix(catalog)) if level == 0 else 1) + 60)
        if process.poll() is None:
            process.kill()
        process.wait()
        by_slot: dict[int, Outcome] = {}
        for line in lines:
            if line.startswith(LINE_PREFIX):
                record = json.loads(line[len(LINE_PREFIX):])
                if "wall" in record:
                    wall = record["wall"]
                elif "index" in record:
                    by_slot[record["slot"]] = Outcome(**record)
                elif record["slot"] in by_slot:
                    by_slot[record["slot"]].status, by_slot[record["slot"]].detail = record["status"], record["detail"]
        outcomes = list(by_slot.values())
    finally:
        stop_agents(agents)
    return outcomes, wall


def stop_agents(agents: list[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL for an agent still running 10 s later (said, since it is a finding)."""
    for agent in agents:
        agent.terminate()
    for agent in agents:
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            print(f"     agent {agent.args[agent.args.index('--silo') + 1]} was still running 10 s after SIGTERM: killed", flush=True)
            agent.kill()
            agent.wait()


def fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=float(os.environ.get("SCALE", 1)))
    parser.add_argument("--levels", default="1,10,25,50", help="comma-separated numbers of concurrent queries")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds each query may take")
    parser.add_argument("--coordinator", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--locations", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.coordinator is not None:
        coordinator(args.home, json.loads(args.locations), args.coordinator, args.deadline, args.home / "answers")
        return 0

    from fedlake.agent.tls import make_tls
    from fedlake.synth.seed import seed_demo_bank

    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="load-bench-", dir=REPO / "bench" / "results"))
    (home / "answers").mkdir()
    catalog = load_catalog(REPO / "silos.yaml")
    seed_demo_bank(catalog, "local", home, args.scale, 42)
    tls = make_tls(home / "tls")
    mix = query_mix(catalog)
    reference, _ = run_level(home, catalog, tls, 0, args.deadline)
    sequential = {o.index: o.seconds for o in reference if o.status == "correct"}
    for o in reference:
        if o.status != "correct":
            print(f"query {o.index} fails even alone: {o.detail}")
    if len(sequential) < len(mix):
        print("the reference run did not answer every query; levels check only those it answered")
    levels = [int(n) for n in args.levels.split(",")]
    print(f"concurrent federated queries, demo bank scale {args.scale:g}, {os.cpu_count()} cores, agents over Flight+TLS, "
          f"deadline {args.deadline:g} s; sequential latency per query: "
          + ", ".join(f"q{i} {s:.2f}s" for i, s in sorted(sequential.items())))
    print(f"{'N':>4} {'correct':>8} {'wrong':>6} {'failed':>7} {'stalled':>8} {'wall s':>8} {'q/s':>7} {'seq q/s':>8} {'x seq':>6} {'p50 s':>7} {'p99 s':>7}")
    report = {"scale": args.scale, "cores": os.cpu_count(), "deadline_s": args.deadline, "sequential_s": sequential, "levels": []}
    for level in levels:
        outcomes, wall = run_level(home, catalog, tls, level, args.deadline)
        counts = {s: sum(o.status == s for o in outcomes) for s in ("correct", "wrong", "failed")}
        stalled = level - len(outcomes)
        expected_sequential = sum(sequential.get(i % len(mix), 0.0) for i in range(level))
        seq_rate = level / expected_sequential if expected_sequential else None
        rate = counts["correct"] / wall if wall else None
        latencies = [o.seconds for o in outcomes if o.status == "correct"]
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        print(f"{level:>4} {counts['correct']:>8} {counts['wrong']:>6} {counts['failed']:>7} {stalled:>8} {fmt(wall, '.2f'):>8} "
              f"{fmt(rate, '.2f'):>7} {fmt(seq_rate, '.2f'):>8} {fmt(rate / seq_rate if rate and seq_rate else None, '.2f'):>6} "
              f"{fmt(p50, '.2f'):>7} {fmt(p99, '.2f'):>7}", flush=True)
        problems = sorted({o.detail for o in outcomes if o.status in ("wrong", "failed")})
        for detail in problems[:3]:
            print(f"     e.g. {detail[:160]}")
        report["levels"].append({"n": level, **counts, "stalled": stalled, "wall_s": wall, "queries_per_s": rate,
                                 "sequential_queries_per_s": seq_rate, "p50_s": p50, "p99_s": p99, "problems": problems})
    print("q/s counts correct answers only; x seq = q/s over running the same queries one after another; "
          "stalled = no answer by the deadline (the level's process is then killed)")
    out = REPO / "bench" / "results" / f"load-scale{args.scale:g}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"written to {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
