"""The `fedlake` command line: one module per verb group, each registering its verbs.

A verb module has `register(verbs)`, which adds its sub-parsers to `verbs` (argparse's
sub-parsers) and sets `run` on each to the function that runs it. Adding a verb is adding a
module and its name to VERB_MODULES. Verb modules import only argparse at the top: each verb
imports what it needs when it runs, so a cold `fedlake query` loads neither the demo bank's
generator nor what served agents plug in (Great Expectations, torch).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from fedlake.cli.messages import DEBUG_ENV, one_line
from fedlake.errors import FedlakeError

VERB_MODULES = (
    "fedlake.cli.bank",
    "fedlake.cli.agents",
    "fedlake.cli.policy",
    "fedlake.cli.query",
    "fedlake.cli.serve",
    "fedlake.cli.audit",
    "fedlake.cli.stack",
)


def build_parser(modules: tuple[str, ...] = VERB_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedlake", description="Query, check and train on data where it lies.")
    parser.add_argument("--silos", type=Path, default=None, help="silos.yaml (default: $FEDLAKE_SILOS or ./silos.yaml)")
    parser.add_argument("--deployment", choices=("local", "prod"), default=None, help="default: $FEDLAKE_DEPLOYMENT or local")
    parser.add_argument("--policies", type=Path, default=None, help="policies.yaml (default: $FEDLAKE_POLICIES, else beside silos.yaml)")
    verbs = parser.add_subparsers(dest="command", required=True)
    for name in modules:
        importlib.import_module(name).register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from fedlake.catalog import default_catalog_path

        args.silos = args.silos or default_catalog_path()
        return args.run(args)
    except FedlakeError as exc:
        print(f"fedlake: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedlake: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader (`head`, a pager) stopped reading: nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return 1
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"fedlake: error: unexpected {type(exc).__name__}: {one_line(str(exc))} (set {DEBUG_ENV}=1 for the traceback)",
              file=sys.stderr)
        return 1
