"""`fedlake query` as a user runs it: a subprocess against the seeded local deployment. It answers,
loads only what a query needs, and every failure is one line on stderr, never a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, TOKENS
from tests.services import free_port

COUNT = "SELECT count(*) AS n FROM sg_lake.customers"
# What a query never needs: the plug-ins served agents add, the orchestrator, and DP noise for a plain count.
NOT_FOR_A_QUERY = ("great_expectations", "torch", "dagster", "scipy", "opendp", "fedlake.quality", "fedlake.learning")


def fedlake(home, tmp_path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    """The CLI in its own process, its ledger entries kept apart from the session's other tests."""
    environment = {
        "PATH": os.environ["PATH"],
        "FEDLAKE_HOME": str(home),
        "FEDLAKE_LEDGER": str(tmp_path / "audit.duckdb"),
        **env,
    }
    return subprocess.run([sys.executable, "-m", "fedlake.cli", *argv], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *named: str) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{result.stderr}"
    [line] = lines
    assert line.startswith("fedlake: error: "), line
    assert "\x1b[" not in line, f"terminal codes in the message: {line!r}"
    for word in named:
        assert word in line, f"{word!r} not named in: {line}"
    return line


def test_a_query_prints_its_answer(local_deployment, tmp_path):
    result = fedlake(local_deployment.home, tmp_path, "query", COUNT, "--purpose", "analytics")
    assert result.returncode == 0, result.stderr
    assert re.search(rf"│\s+{local_deployment.report.rows['sg_lake']['customers']}\s+│", result.stdout), result.stdout


def test_a_query_loads_neither_plugins_nor_training_libraries(local_deployment, tmp_path):
    probe = (
        "import sys\n"
        "from fedlake.cli import main\n"
        f"code = main(['query', {COUNT!r}, '--purpose', 'analytics'])\n"
        f"heavy = {NOT_FOR_A_QUERY!r}\n"
        "loaded = sorted({p for p in heavy for m in sys.modules if m == p or m.startswith(p + '.')})\n"
        "print('exit', code, 'loaded', loaded)\n"
    )
    environment = {"PATH": os.environ["PATH"], "FEDLAKE_HOME": str(local_deployment.home), "FEDLAKE_LEDGER": str(tmp_path / "audit.duckdb")}
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "exit 0 loaded []", result.stdout


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        ("SELECT count(*) AS n FROM mars.customers", ("unknown silo", "mars")),
        ("SELECT count(*) AS n FROM sg_lake.clients", ("unknown table", "sg_lake.clients")),
        ("SELEC count(*) FROM sg_lake.customers", ("cannot parse", "unexpected '('", "line 1, column 12")),
        ("SELECT count(*) AS n FROM customers", ("'customers' names no silo", "name it as silo.table")),
        ("SELECT email FROM sg_lake.customers", ("denied", "email", "sg_lake.customers", "policies.yaml")),
    ],
    ids=["unknown-silo", "unknown-table", "syntax-error", "unqualified-table", "denied"],
)
def test_a_bad_query_is_one_line_naming_the_problem(local_deployment, tmp_path, sql, named):
    result = fedlake(local_deployment.home, tmp_path, "query", sql, "--purpose", "analytics")
    assert_one_line_error(result, *named)
    assert result.stdout == "", "nothing half-printed"


def test_a_dead_agent_is_one_line_naming_where_it_was_sought(local_deployment, tmp_path):
    """prod: the coordinator dials the agent at the address the deployment gives; nobody listens there."""
    port = free_port()
    dead = {"SG_LAKE_AGENT": f"grpc+tcp://127.0.0.1:{port}", "FEDLAKE_TOKEN_COORDINATOR": TOKENS["coordinator"]}
    result = fedlake(local_deployment.home, tmp_path, "--deployment", "prod", "query", COUNT, "--purpose", "analytics", **dead)
    assert_one_line_error(result, f"127.0.0.1:{port}")
