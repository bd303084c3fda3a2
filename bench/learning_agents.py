"""A seeded local deployment and its silo agents serving the learning actions, for the learning
benchmarks: secure aggregation's cost, and several models trained at once.

The agents are built as a deployment builds them (the learning plug-in), so their secure-
aggregation adverts are checked against the deployment's signing keys.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedlake.agent import AgentClient, local_agent_client
from fedlake.catalog import Catalog, load_catalog
from fedlake.plugins import learning_plugin
from fedlake.policy.model import Policy, load_policy
from fedlake.synth.seed import seed_demo_bank

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Seeded:
    catalog: Catalog
    policy: Policy
    home: Path
    clients: dict[str, AgentClient]
    rows: dict[str, dict[str, int]]
    seed_seconds: float


@contextmanager
def seeded_agents(scale: float, seed: int, keep: bool = False) -> Iterator[Seeded]:
    """The demo bank at `scale` in a fresh folder under bench/results/, removed afterwards unless `keep`."""
    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="learning-bench-", dir=REPO / "bench" / "results"))
    try:
        catalog = load_catalog(REPO / "silos.yaml")
        policy = load_policy(REPO / "policies.yaml", catalog)
        report = seed_demo_bank(catalog, "local", home, scale, seed)
        clients = {silo: local_agent_client(catalog, policy, silo, home, plugins=(learning_plugin(),)) for silo in catalog.silos}
        yield Seeded(catalog, policy, home, clients, dict(report.rows), report.seconds)
    finally:
        if keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
