"""Retraining: a nightly schedule, and a drift sensor that asks for it sooner. Drift is the
population stability index of the credit model's input features between the snapshot it was
trained on (kept with its registry version) and the governed features now, from per-bin counts
computed in place."""

import dagster as dg

from fedlake.drift import bin_shares, psi

MODEL_KEYS = [dg.AssetKey(["models", "credit_scoring_model"]), dg.AssetKey(["models", "aml_model"])]
PSI_THRESHOLD = 0.2


def retraining_job():
    return dg.define_asset_job("retrain_models", selection=dg.AssetSelection.assets(*MODEL_KEYS), description="Retrain every model.")


def nightly_retraining(job) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="nightly_retraining",
        cron_schedule="0 2 * * *",
        job=job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Retrain every model at 02:00 UTC on what the governed zone holds then.",
    )


def drift_sensor(job, model: str = "credit_scoring_model", threshold: float = PSI_THRESHOLD) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{model}_drift",
        job=job,
        minimum_interval_seconds=3600,
        required_resource_keys={"governed_zone", "model_registry"},
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests retraining of {model} alone when one of its input features drifts past PSI {threshold}.",
    )
    def sensor(context: dg.SensorEvaluationContext):
        champion = context.resources.model_registry.registry().champion(model)
        if champion is None:
            return dg.SkipReason(f"{model} has no champion yet")
        profile = champion.record.get("training", {}).get("drift_profile")
        if not profile:
            return dg.SkipReason(f"{model} v{champion.version} has no training snapshot to compare with")
        zone = context.resources.governed_zone.connector()
        if profile["table"] not in zone.list_tables():
            return dg.SkipReason(f"governed.{profile['table']} is not there")
        now = bin_shares(zone, profile["table"], profile["edges"])
        drift = {feature: psi(profile["shares"][feature], now[feature]) for feature in profile["edges"]}
        worst = max(drift, key=drift.get)
        if drift[worst] <= threshold:
            return dg.SkipReason(f"no drift: largest PSI {drift[worst]:.3f} ({worst}) <= {threshold}")
        return dg.RunRequest(
            run_key=f"{model}:v{champion.version}:{worst}:{drift[worst]:.3f}",
            asset_selection=[dg.AssetKey(["models", model])],
            tags={"reason": f"drift: PSI {drift[worst]:.3f} on {worst}", "model": model},
        )

    return sensor
