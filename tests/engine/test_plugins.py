"""Plug-ins by registration: an agent serves validation and training only when whoever builds it
passes those plug-ins, and the agent package never imports them itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedlake.agent import build_agent
from fedlake.learning.agent_actions import EVALUATE_ACTION, TRAIN_ACTION
from fedlake.learning.secagg.messages import ADVERTISE_ACTION, SHARE_KEYS_ACTION, UNMASK_ACTION
from fedlake.plugins import learning_plugin, quality_plugin, serving_plugins
from fedlake.policy.model import load_policy
from fedlake.quality import VALIDATE_ACTION
from tests.conftest import REPO

LEARNING = {TRAIN_ACTION, EVALUATE_ACTION, ADVERTISE_ACTION, SHARE_KEYS_ACTION, UNMASK_ACTION}
PLUGGED = {VALIDATE_ACTION, *LEARNING}


@pytest.fixture(scope="module")
def policy(catalog):
    return load_policy(REPO / "policies.yaml", catalog)


def served_actions(local_deployment, policy, plugins) -> set[str]:
    agent = build_agent(local_deployment.catalog, policy, "sg_lake", "local", local_deployment.home, plugins=plugins)
    try:
        return set(agent.action_names())
    finally:
        agent.connector.close()


def test_an_agent_built_without_plugins_serves_queries_but_no_plugged_action(local_deployment, policy):
    actions = served_actions(local_deployment, policy, ())
    assert "ledger_head" in actions and "statistics" in actions
    assert not actions & PLUGGED


def test_each_plugin_adds_its_own_actions(local_deployment, policy):
    bare = served_actions(local_deployment, policy, ())
    assert served_actions(local_deployment, policy, (quality_plugin(),)) - bare == {VALIDATE_ACTION}
    assert served_actions(local_deployment, policy, (learning_plugin(),)) - bare == LEARNING
    assert served_actions(local_deployment, policy, serving_plugins()) - bare == PLUGGED


def test_building_an_agent_imports_no_plugin(local_deployment):
    """In a fresh process: import the agent package and build an agent as `fedlake query` does."""
    probe = (
        "import sys\n"
        "from fedlake.agent import build_agent\n"
        "from fedlake.catalog import load_catalog\n"
        "from fedlake.policy.model import load_policy\n"
        f"catalog = load_catalog({str(REPO / 'silos.yaml')!r})\n"
        f"policy = load_policy({str(REPO / 'policies.yaml')!r}, catalog)\n"
        f"build_agent(catalog, policy, 'sg_lake', 'local', __import__('pathlib').Path({str(local_deployment.home)!r})).connector.close()\n"
        "heavy = ('fedlake.quality', 'fedlake.learning', 'great_expectations', 'torch')\n"
        "print(sorted({p for p in heavy for m in sys.modules if m == p or m.startswith(p + '.')}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]", result.stdout
