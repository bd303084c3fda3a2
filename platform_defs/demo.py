"""`make demo`'s second half: observe and materialize everything, saying each asset as it lands,
then the latest day of the daily in-silo assets, then a table of what went where."""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import time
import uuid
import warnings
from typing import TextIO

import dagster as dg

from platform_defs.definitions import EVERYTHING_JOB, build_definitions
from platform_defs.jobs import DAILY_JOB

_LANDED = {dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_OBSERVATION, dg.DagsterEventType.STEP_FAILURE}


class Progress:
    """Prints each asset as its materialization or observation is stored, from the run's event log
    (polled in a thread, since the run executes in this process)."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, total: int, out: TextIO):
        self.instance, self.run_id, self.total, self.out = instance, run_id, total, out
        self.started = time.monotonic()
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._report()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self._report()

    def _report(self) -> None:
        events = [e for e in self.instance.all_logs(self.run_id) if e.dagster_event and e.dagster_event.event_type in _LANDED]
        for record in events[self.seen :]:
            event = record.dagster_event
            if event.event_type == dg.DagsterEventType.STEP_FAILURE:
                line = f"FAILED {event.step_key}"
            else:
                verb = "observed" if event.event_type == dg.DagsterEventType.ASSET_OBSERVATION else "materialized"
                line = f"{event.asset_key.to_user_string()} {verb}"
            done = sum(1 for r in events[: self.seen + 1] if r.dagster_event.event_type != dg.DagsterEventType.STEP_FAILURE)
            width = len(str(self.total))
            print(f"  [{done:>{width}}/{self.total}] {time.monotonic() - self.started:6.1f}s  {line}", file=self.out, flush=True)
            self.seen += 1


def run(job: dg.JobDefinition, instance: dg.DagsterInstance, out: TextIO, **kwargs) -> dg.ExecuteInProcessResult:
    run_id = str(uuid.uuid4())
    total = len(job.asset_layer.executable_asset_keys)
    # dbt streams its own log to stdout; the progress lines and the summary say what matters
    with Progress(instance, run_id, total, out), contextlib.redirect_stdout(io.StringIO()):
        return job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_id=run_id,
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            **kwargs,
        )


def latest_day(defs: dg.Definitions, silos: list[str]) -> str | None:
    """The last day with transactions in any silo, from each agent's watermark (computed in place)."""
    days = []
    for silo in silos:
        mark = defs.resources[silo].agent().action("watermark").get("transactions", {})
        if mark.get("latest"):
            days.append(str(mark["latest"])[:10])
    return max(days) if days else None


def rows_of(result: dg.ExecuteInProcessResult) -> list[tuple[str, ...]]:
    rows = []
    for event in result.all_events:
        if event.event_type_value not in ("ASSET_MATERIALIZATION", "ASSET_OBSERVATION"):
            continue
        record = event.event_specific_data.materialization if event.is_step_materialization else None
        record = record or getattr(event.event_specific_data, "asset_observation", None)
        meta = {k: v.value for k, v in record.metadata.items()}
        kind = "materialized in" if event.is_step_materialization else "observed in"
        moved = meta.get("bytes_moved_out")
        name = record.asset_key.to_user_string() + (f" [{record.partition}]" if record.partition else "")
        rows.append((
            name,
            f"{kind} {record.asset_key.path[0]}",
            f"{meta.get('dagster/row_count', 0):,}",
            f"{meta.get('bytes_in_silo', meta.get('bytes_in_zone', 0)):,}",
            "-" if moved is None else f"{moved:,}",
        ))
    return rows


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Columns as wide as their widest cell: text left, numbers right."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  " + "  ".join(cells))
    return "\n".join(lines)


def main() -> int:
    # The demo's output is its progress and summary; Dagster's beta notices would bury them.
    warnings.simplefilter("ignore", dg.BetaWarning)
    warnings.simplefilter("ignore", dg.PreviewWarning)
    out = sys.stdout
    defs = build_definitions()
    job = defs.resolve_job_def(EVERYTHING_JOB)
    started = time.monotonic()
    print("observing every silo and materializing every asset where it belongs:", flush=True)
    with dg.DagsterInstance.get() as instance:
        result = run(job, instance, out)
        daily = None
        if result.success:
            silos = sorted({spec.key.path[0] for spec in defs.resolve_all_asset_specs() if spec.partitions_def})
            day = latest_day(defs, silos)
            if day:
                print(f"the daily in-silo assets for {day}, the latest day with transactions:", flush=True)
                daily = run(defs.resolve_job_def(DAILY_JOB), instance, out, partition_key=day)
    elapsed = time.monotonic() - started
    failed = [r for r in (result, daily) if r is not None and not r.success]
    if failed:
        for event in (e for r in failed for e in r.all_events):
            if event.is_failure:
                print(event.message, file=sys.stderr)
        return 1

    print(f"\nmaterialized everything in {elapsed:.1f}s (run {result.run_id})")
    rows = rows_of(result) + (rows_of(daily) if daily else [])
    print(table(("asset", "where", "rows", "bytes in silo", "bytes moved out"), rows))
    models = [
        e.event_specific_data.materialization
        for e in result.all_events
        if e.is_step_materialization and e.event_specific_data.materialization.asset_key.path[0] == "models"
    ]
    for model in models:
        meta = {k: v.value for k, v in model.metadata.items()}
        extra = ", ".join(f"{k} {meta[k]:.3f}" for k in ("eu_only_auc", "oracle_auc") if meta.get(k) is not None)
        print(f"  {model.asset_key.to_user_string()} v{meta['version']}: held-out AUC {meta['auc']:.3f}" + (f" ({extra})" if extra else ""))

    checks = [e.event_specific_data for r in (result, daily) if r for e in r.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    failed_checks = [c for c in checks if not c.passed]
    print(f"\nasset checks: {len(checks) - len(failed_checks)} passed, {len(failed_checks)} failed")
    for check in failed_checks:
        print(f"  FAILED {check.asset_key.to_user_string()} {check.check_name}: {check.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
