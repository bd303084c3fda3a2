"""The jobs and the schedule of partitioned work: everything unpartitioned in one job, and the
daily in-silo assets in a job of their own that a schedule runs for each day that closes."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

EVERYTHING_JOB = "materialize_everything"
DAILY_JOB = "daily_in_silo"


def everything_job(sources: Sequence[dg.AssetsDefinition], partitioned: Sequence[dg.AssetsDefinition]) -> dg.JobDefinition:
    """Observe every silo table and materialize every unpartitioned asset; the daily ones run by day."""
    observed = dg.AssetSelection.assets(*(key for s in sources for key in s.keys))
    by_day = dg.AssetSelection.assets(*(key for a in partitioned for key in a.keys))
    return dg.define_asset_job(
        EVERYTHING_JOB,
        selection=(dg.AssetSelection.all() | observed) - by_day,
        description="Observe every silo table and materialize every asset, where each belongs (daily partitions aside).",
    )


def daily_job(partitioned: Sequence[dg.AssetsDefinition]) -> dg.JobDefinition:
    return dg.define_asset_job(
        DAILY_JOB,
        selection=dg.AssetSelection.assets(*(key for a in partitioned for key in a.keys)),
        description="One day of every silo's daily in-silo assets.",
    )


def daily_schedule(job: dg.JobDefinition) -> dg.ScheduleDefinition:
    """Each day, once it has closed (01:00 UTC), its partition in every silo."""
    return dg.build_schedule_from_partitioned_job(
        job, hour_of_day=1, default_status=dg.DefaultScheduleStatus.RUNNING, name=f"{DAILY_JOB}_schedule"
    )
