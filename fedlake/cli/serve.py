"""`fedlake serve`: the coordinator as an Arrow Flight SQL server (ADBC, JDBC, BI tools)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedlake.cli import settings


def register(verbs: argparse._SubParsersAction) -> None:
    served = verbs.add_parser("serve", help="run the coordinator as an Arrow Flight SQL server (ADBC, JDBC, BI tools)")
    served.add_argument("--host", default="127.0.0.1")
    served.add_argument("--port", type=int, default=32010, help="0 picks a free port (printed)")
    served.add_argument("--tls-cert", type=Path, default=None)
    served.add_argument("--tls-key", type=Path, default=None)
    served.set_defaults(run=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from fedlake.runtime import settle_heap
    from fedlake.serve.coordinator import Coordinator
    from fedlake.serve.flightsql import serve
    from fedlake.silos import data_dir

    catalog = settings.catalog(args)
    coordinator = Coordinator(catalog, settings.policy(args, catalog), settings.deployment(args), data_dir())
    settle_heap()
    serve(coordinator, args.host, args.port, args.tls_cert, args.tls_key)
    return 0
