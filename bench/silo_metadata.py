"""The fixed cost of silo metadata per request: how long an agent takes to look up the tables a
request names (`tables_for`) and to plan it through the gate, per silo, over many calls.

    .venv/bin/python bench/silo_metadata.py --scale 0.05 --calls 200

Seeds the demo bank into a fresh local deployment (a temporary folder unless --home is given), then
times the same request against each silo's in-process agent. Nothing here changes between calls, so
what a call costs beyond the gate is the metadata it asks its silo for again.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fedlake.agent import local_agent_client
from fedlake.agent.subset import parse_subset
from fedlake.catalog import load_catalog
from fedlake.policy.model import load_policy
from fedlake.synth.seed import seed_demo_bank

REPO = Path(__file__).resolve().parent.parent
REQUEST = (
    "SELECT t.txn_id, t.amount, a.customer_id FROM transactions t JOIN accounts a ON a.account_id = t.account_id "
    "WHERE t.amount > 100",
    "aml",
)


def per_call_ms(fn, calls: int, rounds: int = 5) -> float:
    """Milliseconds per call in the best of `rounds` rounds (the round least disturbed by the machine)."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e3


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--home", type=Path, default=None, help="a local deployment's folder, seeded here if empty")
    args = parser.parse_args()

    catalog = load_catalog(REPO / "silos.yaml")
    policy = load_policy(REPO / "policies.yaml", catalog)
    home = args.home or Path(tempfile.mkdtemp(prefix="silo-metadata-"))
    if not home.exists() or not any(home.iterdir()):
        seed_demo_bank(catalog, "local", home, args.scale, 42)
    sql, purpose = REQUEST
    tree = parse_subset(sql)
    print(f"silo metadata per request, best of 5 rounds of {args.calls} calls, home {home}")
    print(f"{'silo':<8} {'tables_for ms':>14} {'plan ms':>10} {'list+schema ms':>15}")
    for silo in catalog.silos:
        client = local_agent_client(catalog, policy, silo, home)
        agent, connector = client.agent, client.agent.connector
        try:
            lookup = per_call_ms(lambda: agent.tables_for(tree), args.calls)
            plan = per_call_ms(lambda: agent.plan(client.caller, sql, purpose), args.calls)
            listing = per_call_ms(lambda: (connector.list_tables(), connector.schema("transactions")), args.calls)
        finally:
            client.close()
        print(f"{silo:<8} {lookup:>14.3f} {plan:>10.3f} {listing:>15.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
