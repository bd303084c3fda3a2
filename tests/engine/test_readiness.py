"""A prod agent refuses to start without its configuration, naming every missing item in one line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from fedlake.agent.readiness import AgentNotConfigured, missing_configuration, require_configuration
from fedlake.agent.tls import make_tls
from fedlake.policy.model import load_policy
from tests.conftest import REPO

PROD_VARIABLES = ("FEDLAKE_", "EU_CORE", "US_LAKE", "SG_LAKE", "AWS_")


@pytest.fixture
def bare_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith(PROD_VARIABLES):
            monkeypatch.delenv(name)


def test_every_missing_item_is_named_at_once(catalog, bare_env, tmp_path):
    policy = load_policy(REPO / "policies.yaml", catalog)
    with pytest.raises(AgentNotConfigured) as refused:
        require_configuration(catalog, policy, "us_lake")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("agent us_lake will not start in prod: missing ")
    for item in ("FEDLAKE_LEDGER", "FEDLAKE_PSEUDONYM_KEY", "FEDLAKE_SIGNING_KEY", "FEDLAKE_TOKEN_COORDINATOR",
                 "FEDLAKE_TOKEN_ANALYST", "US_LAKE_BUCKET", "US_LAKE_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY", "--tls-cert", "--tls-key"):
        assert item in message
    assert "EU_CORE_DSN" not in message  # another silo's settings are none of this agent's business


def test_a_configured_agent_lacks_nothing_and_owner_credentials_are_not_required(catalog, bare_env, monkeypatch, tmp_path):
    policy = load_policy(REPO / "policies.yaml", catalog)
    tls = make_tls(tmp_path / "tls")
    key = tmp_path / "signing.pem"
    key.write_text("a key")
    for name, value in {"FEDLAKE_LEDGER": "postgresql://ledger", "FEDLAKE_PSEUDONYM_KEY": "k", "FEDLAKE_SIGNING_KEY": str(key),
                        "FEDLAKE_TOKEN_COORDINATOR": "t1", "FEDLAKE_TOKEN_ANALYST": "t2", "EU_CORE_DSN": "postgresql://r",
                        "EU_CORE_WRITER_DSN": "postgresql://w"}.items():
        monkeypatch.setenv(name, value)
    assert missing_configuration(catalog, policy, "eu_core", tls["cert"], tls["key"]) == []
    monkeypatch.setenv("FEDLAKE_SIGNING_KEY", str(tmp_path / "nowhere.pem"))
    assert missing_configuration(catalog, policy, "eu_core", tls["cert"], tmp_path / "none.key") == [
        f"FEDLAKE_SIGNING_KEY={tmp_path / 'nowhere.pem'} (no such file)", f"--tls-key {tmp_path / 'none.key'} (no such file)"]


def test_the_agent_command_prints_one_line_and_exits(bare_env, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(PROD_VARIABLES)}
    done = subprocess.run(
        [sys.executable, "-m", "fedlake.cli", "--silos", str(REPO / "silos.yaml"), "--deployment", "prod",
         "agent", "serve", "--silo", "sg_lake", "--port", "0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "FEDLAKE_LEDGER" in lines[0] and "SG_LAKE_ROOT" in lines[0] and "--tls-cert" in lines[0]
    assert not (tmp_path / "data").exists()  # nothing written on the way out


def test_trial_certificates_keep_their_private_key_to_the_owner(tmp_path):
    old = os.umask(0)  # even a permissive umask must not widen a private key
    try:
        paths = make_tls(tmp_path / "certs")
    finally:
        os.umask(old)
    assert stat.S_IMODE(paths["key"].stat().st_mode) == 0o600
    assert stat.S_IMODE(paths["ca"].stat().st_mode) & 0o077 != 0  # certificates are public
