"""Sensors on an ephemeral instance: new data gives one run request and the next tick none; a
failed run leaves an alert."""

from __future__ import annotations

import json

import dagster as dg
import pyarrow as pa

from fedlake.silos import open_silo
from fedlake.synth.seed import seed_demo_bank
from platform_defs.definitions import build_definitions
from sensors.run_failures import alerts_path
from tests.conftest import REPO


def tick(defs, name, instance, cursor):
    sensor = defs.resolve_sensor_def(name)
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources, definitions=defs) as context:
        result = sensor.evaluate_tick(context)
    return result


def test_new_rows_in_sg_lake_give_one_run_request_then_none(catalog, tmp_path):
    seed_demo_bank(catalog, "local", tmp_path, 0.01, 5)
    defs = build_definitions(REPO / "silos.yaml", "local", tmp_path)
    instance = dg.DagsterInstance.ephemeral()

    baseline = tick(defs, "sg_lake_new_data", instance, None)
    assert baseline.run_requests == [] and "recorded sg_lake's high-water mark" in baseline.skip_message
    quiet = tick(defs, "sg_lake_new_data", instance, baseline.cursor)
    assert quiet.run_requests == [] and quiet.skip_message == "no new data in sg_lake"

    with open_silo(catalog.silo("sg_lake"), "local", tmp_path) as lake:
        current = lake.execute("SELECT * FROM transactions").read_all()
        extra = current.slice(0, 5)
        lake.load("transactions", current.schema, [*current.to_batches(), *extra.to_batches()])

    fresh = tick(defs, "sg_lake_new_data", instance, quiet.cursor)
    [request] = fresh.run_requests
    assert request.tags["tables"] == "transactions" and request.run_key.startswith("sg_lake:")
    assert json.loads(fresh.cursor)["transactions"]["rows"] == current.num_rows + 5
    after = tick(defs, "sg_lake_new_data", instance, fresh.cursor)
    assert after.run_requests == []
    # the other silos saw nothing new
    assert tick(defs, "us_lake_new_data", instance, tick(defs, "us_lake_new_data", instance, None).cursor).run_requests == []


def test_a_failed_run_is_recorded_as_an_alert(tmp_path):
    @dg.asset
    def always_fails() -> None:
        raise RuntimeError("the silo is on fire")

    defs = build_definitions(REPO / "silos.yaml", "local", tmp_path)
    sensor = defs.resolve_sensor_def("record_run_failures")
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([always_fails], instance=instance, raise_on_error=False)
    assert not result.success
    [failure] = [r.dagster_event for r in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)]
    context = dg.build_run_status_sensor_context(
        sensor_name="record_run_failures", dagster_instance=instance, dagster_run=result.dagster_run, dagster_event=failure
    ).for_run_failure()
    sensor(context)
    [alert] = [json.loads(line) for line in alerts_path(tmp_path).read_text().splitlines()]
    assert alert["run_id"] == result.run_id and alert["job"] == result.dagster_run.job_name
    assert alert["error"]
