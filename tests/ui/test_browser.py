"""The Dagster UI on the demo data, checked in a real browser (Playwright driving Debian's
chromium): the asset graph shows the three silo groups and the governed join layer, a
materialization launched from the UI succeeds, the governed asset plots the bytes that crossed
each silo's border and summarises its policy decisions, its checks ran, a day of the daily
in-silo assets shows as materialized; the screenshots the README shows are taken."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from platform_defs.definitions import build_definitions
from platform_defs.jobs import DAILY_JOB
from tests.conftest import REPO, materialize_groups
from tests.services import free_port, wait_for_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = REPO / "docs" / "asset-lineage.png"
SHOTS = {name: REPO / "docs" / f"ui-{name}.png" for name in ("bytes-by-silo", "policy-summary", "governed-checks", "daily-partitions")}
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
        # a second materialization of the join layer, so its per-silo plots have a line
        assert materialize_groups(defs, {"governed"}, instance=instance).success
        daily = defs.resolve_job_def(DAILY_JOB)
        assert daily.execute_in_process(instance=instance, partition_key="2025-12-30").success
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


def dismiss_welcome(page, wait_ms: int = 1500) -> None:
    """The UI greets a new browser with a community dialog, sometimes seconds after the page loads."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=wait_ms)
    except PlaywrightTimeout:
        return
    skip.click()
    skip.wait_for(state="hidden", timeout=10_000)


def wait_for_success(page, webserver, run_id: str) -> None:
    deadline = time.monotonic() + 300
    status = ""
    while time.monotonic() < deadline:
        page.goto(f"{webserver}/runs?q%5B0%5D=status%3ASUCCESS", wait_until="networkidle")
        status = page.inner_text("body")
        if run_id in status:
            return
        page.wait_for_timeout(3000)
    raise AssertionError(f"run {run_id} launched from the UI did not succeed in time")


def test_governed_asset_plots_bytes_per_silo_summarises_policy_and_shows_its_checks(webserver):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        asset = f"{webserver}/assets/governed/customer_credit_features"

        page.goto(asset, wait_until="networkidle")
        dismiss_welcome(page, 15_000)
        page.get_by_role("button", name="Plots").first.click()
        for silo in ("eu_core", "us_lake", "sg_lake"):
            page.get_by_text(f"bytes_out/{silo}", exact=True).first.wait_for(timeout=60_000)
        page.get_by_text("bytes_out/eu_core", exact=True).first.scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SHOTS["bytes-by-silo"]))

        page.goto(f"{asset}?view=events", wait_until="networkidle")
        summary = page.get_by_text("policy_summary", exact=True).first
        summary.wait_for(timeout=60_000)
        summary.scroll_into_view_if_needed()
        body = page.inner_text("body")
        assert "pseudonymize" in body and "classifications.pii.direct[0]" in body
        assert str(REPO) not in body, "no absolute path in what the UI shows"
        page.screenshot(path=str(SHOTS["policy-summary"]))

        page.goto(f"{asset}?view=checks", wait_until="networkidle")
        page.get_by_text("Succeeded").first.wait_for(timeout=60_000)
        listed = page.content()  # long check names are middle-truncated on screen; the page holds them whole
        for check in ("row_count_reconciles_with_sources", "no_undeclared_pii", "schema_contract"):
            assert check in listed, check
        assert "Failed" not in page.inner_text("body")
        page.screenshot(path=str(SHOTS["governed-checks"]))
        browser.close()
    assert all(SHOTS[name].stat().st_size > 10_000 for name in ("bytes-by-silo", "policy-summary", "governed-checks"))


def test_a_day_of_a_partitioned_asset_shows_as_materialized(webserver):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{webserver}/assets/sg_lake/daily_transactions?view=partitions", wait_until="networkidle")
        dismiss_welcome(page, 15_000)
        page.get_by_text("Materialized (1)").first.wait_for(timeout=60_000)
        assert "Missing (" in page.inner_text("body")
        page.get_by_placeholder("Filter by name").fill("2025-12-30")
        page.get_by_text("2025-12-30", exact=True).first.click()
        page.get_by_text("daily_in_silo").first.wait_for(timeout=60_000)
        page.screenshot(path=str(SHOTS["daily-partitions"]))
        browser.close()
    assert SHOTS["daily-partitions"].stat().st_size > 10_000


def test_asset_graph_shows_silos_and_join_layer_and_a_ui_run_succeeds(webserver):
    assert os.path.exists(CHROMIUM), "chromium comes from Debian's package; `make test` installs it"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})

        page.goto(f"{webserver}/asset-groups", wait_until="networkidle")
        dismiss_welcome(page, 15_000)
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
        wait_for_success(page, webserver, launched.inner_text().split()[-1])
        browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
