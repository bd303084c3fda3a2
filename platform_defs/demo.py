"""`make demo`'s second half: observe and materialize everything, then say what went where."""

from __future__ import annotations

import contextlib
import io
import sys
import time
import warnings

import dagster as dg

from platform_defs.definitions import EVERYTHING_JOB, build_definitions


def main() -> int:
    # The demo's output is its summary; Dagster's beta notices (observable sources) would bury it.
    warnings.simplefilter("ignore", dg.BetaWarning)
    defs = build_definitions()
    job = defs.resolve_job_def(EVERYTHING_JOB)
    started = time.monotonic()
    # dbt streams its own log to stdout; the summary below says what matters
    with dg.DagsterInstance.get() as instance, contextlib.redirect_stdout(io.StringIO()):
        result = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
    elapsed = time.monotonic() - started
    if not result.success:
        for event in result.all_events:
            if event.is_failure:
                print(event.message, file=sys.stderr)
        return 1

    print(f"\nmaterialized everything in {elapsed:.1f}s (run {result.run_id})")
    print(f"  {'asset':<30} {'where':<26} {'rows':>10} {'bytes in silo':>14} {'bytes moved out':>16}")
    for event in result.all_events:
        if event.event_type_value not in ("ASSET_MATERIALIZATION", "ASSET_OBSERVATION"):
            continue
        record = event.event_specific_data.materialization if event.is_step_materialization else None
        record = record or getattr(event.event_specific_data, "asset_observation", None)
        meta = {k: v.value for k, v in record.metadata.items()}
        kind = "materialized in" if event.is_step_materialization else "observed in"
        where = f"{kind} {record.asset_key.path[0]}"
        moved = meta.get("bytes_moved_out", "-")
        print(
            f"  {record.asset_key.to_user_string():<30} {where:<26} {meta.get('dagster/row_count', 0):>10,} "
            f"{meta.get('bytes_in_silo', meta.get('bytes_in_zone', 0)):>14,} {moved:>16}"
        )
    models = [
        e.event_specific_data.materialization
        for e in result.all_events
        if e.is_step_materialization and e.event_specific_data.materialization.asset_key.path[0] == "models"
    ]
    for model in models:
        meta = {k: v.value for k, v in model.metadata.items()}
        extra = ", ".join(f"{k} {meta[k]:.3f}" for k in ("eu_only_auc", "oracle_auc") if meta.get(k) is not None)
        print(f"  {model.asset_key.to_user_string()} v{meta['version']}: held-out AUC {meta['auc']:.3f}" + (f" ({extra})" if extra else ""))

    checks = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    failed = [c for c in checks if not c.passed]
    print(f"\nasset checks: {len(checks) - len(failed)} passed, {len(failed)} failed")
    for check in failed:
        print(f"  FAILED {check.asset_key.to_user_string()} {check.check_name}: {check.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
