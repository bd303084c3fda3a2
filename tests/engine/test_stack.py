"""`make prod-up` as a new user runs it: PostgreSQL over TCP, S3, TLS agents, Dagster on PostgreSQL;
then the README's steps — source stack.env, seed, a federated query, `fedlake audit verify` — and down."""

from __future__ import annotations

import csv
import io
import os
import shlex
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.conftest import REPO
from tests.services import free_port

QUERY = (
    "SELECT 'eu_core' AS silo, count(*) AS n FROM eu_core.customers "
    "UNION ALL SELECT 'us_lake', count(*) FROM us_lake.customers "
    "UNION ALL SELECT 'sg_lake', count(*) FROM sg_lake.customers"
)


def _stack_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = shlex.split(value)[0]
    return env


def _listening(location: str) -> bool:
    host, port = location.rsplit("//", 1)[1].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


def test_prod_up_serves_a_federated_query_with_an_intact_signed_ledger_then_goes_down(tmp_path):
    state = tmp_path / "prod"
    # a shell that never sourced anything: none of the deployment's variables
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FEDLAKE_", "EU_CORE", "US_LAKE", "SG_LAKE", "DAGSTER_"))}
    base["FEDLAKE_HOME"] = str(tmp_path / "home")
    venv_bin = str(Path(sys.executable).parent)
    base["PATH"] = os.pathsep.join(p for p in base.get("PATH", "").split(os.pathsep) if p != venv_bin)  # no fedlake on it
    make = ["make", "-s", "--no-print-directory", f"PROD_DIR={state}"]
    up = subprocess.run([*make, "prod-up", f"PORT={free_port()}"], cwd=REPO, env=base, capture_output=True, text=True, timeout=420)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"source {state / 'stack.env'}" in up.stdout
        assert (state / "stack.env").stat().st_mode & 0o077 == 0  # it holds the deployment's secrets
        env = {**base, **_stack_env(state / "stack.env")}
        with urllib.request.urlopen(env["FEDLAKE_DAGSTER_URL"] + "/server_info", timeout=30) as answer:
            assert answer.status == 200  # Dagster's webserver, on the dagster-postgres instance

        def fedlake(*args: str) -> subprocess.CompletedProcess:
            """As the README says: source stack.env, then `fedlake` from the PATH it sets."""
            script = f'source {shlex.quote(str(state / "stack.env"))} && exec fedlake "$@"'
            done = subprocess.run(["bash", "-c", script, "fedlake", *args], cwd=tmp_path, env=base, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "Traceback" not in done.stderr and "alignment" not in done.stderr.lower()
            return done

        seeded = fedlake("seed", "--scale", "0.02").stdout
        query = fedlake("query", "--purpose", "analytics", "--format", "csv", QUERY).stdout
        counts = {row["silo"]: int(row["n"]) for row in csv.DictReader(io.StringIO(query))}
        for silo, n in counts.items():
            assert f"customers {n:,}" in next(line for line in seeded.splitlines() if line.strip().startswith(silo))
        assert set(counts) == {"eu_core", "us_lake", "sg_lake"}
        verified = fedlake("audit", "verify", "--require-signatures").stdout
        assert "intact" in verified and " 0 entries" not in verified
        locations = [env[name] for name in ("EU_CORE_AGENT", "US_LAKE_AGENT", "SG_LAKE_AGENT")]
        assert all(_listening(location) for location in locations)
    finally:
        down = subprocess.run([*make, "prod-down"], cwd=REPO, env=base, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert {"agent:eu_core", "agent:us_lake", "agent:sg_lake", "s3", "dagster-webserver", "postgres"} <= set(
        down.stdout.strip().removeprefix("stopped: ").split(", ")
    )
    assert not any(_listening(location) for location in locations)
    assert not (state / "stack.env").exists()
