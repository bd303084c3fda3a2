"""Dagster on PostgreSQL: the prod deployment's instance keeps its runs in PostgreSQL's runs table."""

from __future__ import annotations

import shutil

import dagster as dg
import psycopg

from platform_defs.definitions import EVERYTHING_JOB, build_definitions
from tests.conftest import REPO


def test_prod_runs_are_in_postgres(prod_deployment, postgres_dsn, tmp_path, monkeypatch):
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS dagster_test")
        conn.execute("CREATE DATABASE dagster_test")
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO / "deploy" / "prod" / "dagster.yaml", dagster_home / "dagster.yaml")
    url = postgres_dsn.rsplit("/", 1)[0] + "/dagster_test"
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("DAGSTER_PG_URL", url)

    defs = build_definitions(REPO / "silos.yaml", "prod", prod_deployment.home)
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        result = defs.resolve_job_def(EVERYTHING_JOB).execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey(["sg_lake", "monthly_spending"])]
        )
        assert result.success
    with psycopg.connect(url) as conn:
        status = conn.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,)).fetchone()
        events = conn.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'", (result.run_id,)
        ).fetchone()[0]
    assert status == ("SUCCESS",) and events == 1
