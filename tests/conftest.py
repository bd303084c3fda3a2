"""Session fixtures: the services and the seeded silos that the tests share.

Nothing is mocked: the local deployment runs on an embedded PostgreSQL and local lakes; the prod
deployment on a PostgreSQL server over TCP, moto's S3 server, and a lake folder.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedlake.catalog import Catalog, load_catalog
from fedlake.synth.seed import SeedReport, seed_demo_bank
from fedlake.agent.tls import make_tls
from tests.services import agent_process, create_bucket, postgres_server, s3_server, silo_role_dsns

REPO = Path(__file__).resolve().parent.parent
TEST_SCALE = 0.05
TEST_SEED = 7

os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


@dataclass
class Deployment:
    """A seeded deployment: which one, its data folder, the catalog and what seeding wrote."""

    name: str
    home: Path
    catalog: Catalog
    report: SeedReport
    env: dict[str, str]

    def env_location(self, silo: str) -> str:
        """Where the coordinator reaches a silo's agent (prod): the address its agent process printed."""
        return os.environ[self.catalog.silo(silo).agents["prod"]["location"].name]


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog(REPO / "silos.yaml")


@pytest.fixture(scope="session")
def local_deployment(tmp_path_factory, catalog) -> Deployment:
    home = tmp_path_factory.mktemp("local_home")
    report = seed_demo_bank(catalog, "local", home, TEST_SCALE, TEST_SEED)
    return Deployment("local", home, catalog, report, {})


@pytest.fixture(scope="session")
def four_silo_deployment(tmp_path_factory) -> Deployment:
    """The demo bank on a generated silos.yaml of four silos: the demo's three and uk_lake in region
    UK (GBP), which the generator knows nothing of; local, seeded once at the test scale."""
    from fedlake.synth.regional_catalog import write_regional_catalog

    home = tmp_path_factory.mktemp("four_silos")
    catalog = load_catalog(write_regional_catalog(REPO / "silos.yaml", 4, home / "silos.yaml"))
    report = seed_demo_bank(catalog, "local", home, TEST_SCALE, TEST_SEED)
    return Deployment("local", home, catalog, report, {})


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory):
    with postgres_server(tmp_path_factory.mktemp("postgres")) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def s3_endpoint():
    with s3_server() as endpoint:
        yield endpoint


TOKENS = {"coordinator": "token-of-the-coordinator-" + "c" * 16, "analyst": "token-of-the-analyst-" + "a" * 16}
PSEUDONYM_KEY = "test-pseudonym-key-shared-by-every-silo"


@pytest.fixture(scope="session")
def tls(tmp_path_factory) -> dict[str, Path]:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def prod_env(postgres_dsn, s3_endpoint, tmp_path_factory, tls) -> dict[str, str]:
    # eu_core's agent reads and materializes as its own roles; the superuser stays the owner's
    eu_core_reader, eu_core_writer = silo_role_dsns(postgres_dsn, "eu_core")
    env = {
        "EU_CORE_DSN": eu_core_reader,
        "EU_CORE_WRITER_DSN": eu_core_writer,
        "EU_CORE_OWNER_DSN": postgres_dsn,
        "US_LAKE_BUCKET": "fedlake-us",
        "US_LAKE_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "fedlake-test",
        "AWS_SECRET_ACCESS_KEY": "fedlake-test-secret",
        "SG_LAKE_ROOT": str(tmp_path_factory.mktemp("sg_lake")),
        "FEDLAKE_LEDGER": postgres_dsn,
        "FEDLAKE_GOVERNED_DSN": postgres_dsn,
        "FEDLAKE_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "FEDLAKE_TOKEN_COORDINATOR": TOKENS["coordinator"],
        "FEDLAKE_TOKEN_ANALYST": TOKENS["analyst"],
        "FEDLAKE_AGENT_CA": str(tls["ca"]),
    }
    create_bucket(s3_endpoint, env["US_LAKE_BUCKET"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    return env


@pytest.fixture(scope="session")
def prod_deployment(tmp_path_factory, catalog, prod_env, tls) -> Deployment:
    """The prod deployment: seeded by the owners, then one agent process per silo over TLS on
    loopback. Its env vars (secrets and addresses, read through {env: ...} and dg.EnvVar) are set
    for the whole session, as they would be on the coordinator's machine."""
    os.environ.update(prod_env)
    home = tmp_path_factory.mktemp("prod_home")
    report = seed_demo_bank(catalog, "prod", home, TEST_SCALE, TEST_SEED)
    with ExitStack() as agents:
        for name, spec in catalog.silos.items():
            location, _ = agents.enter_context(agent_process(name, {**prod_env, "FEDLAKE_HOME": str(home)}, tls, home / f"agent-{name}.log"))
            os.environ[spec.agents["prod"]["location"].name] = location
        yield Deployment("prod", home, catalog, report, prod_env)


@pytest.fixture(params=["local", "prod"])
def deployment(request) -> Deployment:
    return request.getfixturevalue(f"{request.param}_deployment")


def materialize_groups(defs, groups: set[str], **kwargs):
    """Run the everything job over the unpartitioned assets of these groups (what a test needs, no more)."""
    import dagster as dg

    from platform_defs.definitions import EVERYTHING_JOB

    keys = [spec.key for spec in defs.resolve_all_asset_specs() if spec.group_name in groups and spec.partitions_def is None]
    return defs.resolve_job_def(EVERYTHING_JOB).execute_in_process(
        instance=kwargs.pop("instance", None) or dg.DagsterInstance.ephemeral(), asset_selection=keys, **kwargs
    )
