"""A run-failure sensor that records an alert for every failed run, where the platform team reads
them: one JSON line per failure in the governed zone's alerts file."""

import datetime as dt
import json
from pathlib import Path

import dagster as dg


def alerts_path(home: Path) -> Path:
    return home / "governed" / "alerts.jsonl"


def run_failure_alerts(home: Path) -> dg.SensorDefinition:
    @dg.run_failure_sensor(name="record_run_failures", default_status=dg.DefaultSensorStatus.RUNNING)
    def record_run_failures(context: dg.RunFailureSensorContext) -> None:
        path = alerts_path(home)
        path.parent.mkdir(parents=True, exist_ok=True)
        alert = {
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "run_id": context.dagster_run.run_id,
            "job": context.dagster_run.job_name,
            "error": context.failure_event.message,
        }
        with path.open("a") as out:
            out.write(json.dumps(alert) + "\n")

    return record_run_failures
