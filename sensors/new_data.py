"""A new-data sensor per silo. Its cursor is the silo's high-water mark, asked of the silo's agent
(row count and latest timestamp per table, computed in place), so a tick with no new data requests
nothing and a tick after new rows requests exactly one run: observe the silo and rebuild what
depends on it, up to the governed zone and its marts. Models are not in that run: new rows in one
silo do not retrain every model; the drift sensor and the nightly schedule decide that."""

import hashlib
import json

import dagster as dg

from fedlake.catalog import Catalog, SiloSpec

MODELS_GROUP = "models"


def _digest(marks: dict) -> str:
    return hashlib.sha256(json.dumps(marks, sort_keys=True).encode()).hexdigest()[:16]


def new_data_sensor(spec: SiloSpec) -> dg.SensorDefinition:
    sources = dg.AssetSelection.assets(*[dg.AssetKey([spec.name, table]) for table in spec.tables])
    job = dg.define_asset_job(
        f"{spec.name}_refresh",
        selection=(sources | sources.downstream(include_self=False)) - dg.AssetSelection.groups(MODELS_GROUP),
        description=f"Observe {spec.name} and rebuild what depends on it, models aside (they retrain on drift or nightly).",
    )

    @dg.sensor(
        name=f"{spec.name}_new_data",
        job=job,
        minimum_interval_seconds=300,
        required_resource_keys={spec.name},
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests a refresh when {spec.name}'s high-water mark moves.",
    )
    def sensor(context: dg.SensorEvaluationContext):
        marks = getattr(context.resources, spec.name).agent().action("watermark")
        previous = json.loads(context.cursor) if context.cursor else None
        context.update_cursor(json.dumps(marks, sort_keys=True))
        if previous is None:
            return dg.SkipReason(f"recorded {spec.name}'s high-water mark: {sum(m['rows'] for m in marks.values()):,} rows")
        changed = sorted(t for t, mark in marks.items() if previous.get(t) != mark)
        if not changed:
            return dg.SkipReason(f"no new data in {spec.name}")
        return dg.RunRequest(run_key=f"{spec.name}:{_digest(marks)}", tags={"silo": spec.name, "tables": ",".join(changed)})

    return sensor


def new_data_sensors(catalog: Catalog) -> list[dg.SensorDefinition]:
    return [new_data_sensor(spec) for spec in catalog.silos.values()]
