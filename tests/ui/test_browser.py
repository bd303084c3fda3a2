"""The Dagster UI on the demo data, checked in a real browser (Playwright driving Debian's
chromium): the asset graph shows the three silo groups and the governed join layer, a
materialization launched from the UI succeeds, and the screenshot the README shows is taken."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest
from playwright.sync_api import sync_playwright

from platform_defs.definitions import build_definitions
from tests.conftest import REPO, materialize_groups
from tests.services import free_port, wait_for_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = REPO / "docs" / "asset-lineage.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def webserver(local_deployment, tmp_path_factory):
    """The Dagster UI on the demo data: everything materialized once, state in its own DAGSTER_HOME."""
    dagster_home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {**os.environ, "FEDLAKE_HOME": str(local_deployment.home), "DAGSTER_HOME": str(dagster_home),
           "FEDLAKE_SILOS": str(REPO / "silos.yaml"), "FEDLAKE_DEPLOYMENT": "local"}
    for name in ("FEDLAKE_LEDGER", "FEDLAKE_GOVERNED_DSN"):
        env.pop(name, None)
    defs = build_definitions(REPO / "silos.yaml", "local", local_deployment.home)
    groups = {spec.group_name for spec in defs.resolve_all_asset_specs()} - {"models"}  # training is tested elsewhere
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        assert materialize_groups(defs, groups, instance=instance).success
    port = free_port()
    log = open(dagster_home / "webserver.log", "w")
    # `dagster dev`, as `make ui` runs it: the webserver and the daemon that launches queued runs
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_port(port, timeout=180)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def dismiss_welcome(page) -> None:
    page.wait_for_timeout(1500)
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.click()


def test_asset_graph_shows_silos_and_join_layer_and_a_ui_run_succeeds(webserver):
    assert os.path.exists(CHROMIUM), "chromium comes from Debian's package; `make test` installs it"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})

        page.goto(f"{webserver}/asset-groups", wait_until="networkidle")
        dismiss_welcome(page)
        graph = page.locator("body")
        for group in ("eu_core", "us_lake", "sg_lake", "governed"):
            page.get_by_text(group, exact=True).first.wait_for(timeout=60_000)
        assert "Global asset lineage" in graph.inner_text()
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))

        page.goto(f"{webserver}/assets/governed/customer_credit_features", wait_until="networkidle")
        dismiss_welcome(page)
        page.get_by_text("credit_scoring").first.wait_for(timeout=60_000)

        page.goto(f"{webserver}/assets/sg_lake/monthly_spending", wait_until="networkidle")
        dismiss_welcome(page)
        page.get_by_role("button").filter(has_text="Materialize").first.click()
        launched = page.get_by_text("Launched run")
        launched.wait_for(timeout=60_000)
        run_id = launched.inner_text().split()[-1]
        page.goto(f"{webserver}/runs", wait_until="networkidle")
        deadline = time.monotonic() + 180
        status = ""
        while time.monotonic() < deadline:
            page.goto(f"{webserver}/runs?q%5B0%5D=status%3ASUCCESS", wait_until="networkidle")
            status = page.inner_text("body")
            if run_id in status:
                break
            page.wait_for_timeout(3000)
        assert run_id in status, f"run {run_id} launched from the UI did not succeed in time"
        browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
