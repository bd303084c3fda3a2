"""`fedlake agent serve` (a silo's Arrow Flight agent) and `fedlake agent certs` (a trial CA)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedlake.cli import settings


def register(verbs: argparse._SubParsersAction) -> None:
    agent = verbs.add_parser("agent", help="silo agents").add_subparsers(dest="agent_command", required=True)
    serve = agent.add_parser("serve", help="run a silo's agent: an Arrow Flight server next to the silo")
    serve.add_argument("--silo", required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    serve.add_argument("--tls-cert", type=Path, default=None)
    serve.add_argument("--tls-key", type=Path, default=None)
    serve.set_defaults(run=cmd_agent_serve)
    certs = agent.add_parser("certs", help="make a CA and an agent certificate (for trials; use your own CA in production)")
    certs.add_argument("--out", type=Path, required=True)
    certs.add_argument("--host", action="append", default=None, help="host name or IP the agent is reached at (repeatable)")
    certs.add_argument("--days", type=int, default=365)
    certs.set_defaults(run=cmd_agent_certs)


def cmd_agent_serve(args: argparse.Namespace) -> int:
    from fedlake.agent import build_agent
    from fedlake.agent.server import AgentFlightServer
    from fedlake.cli.clients import require_lake_folder
    from fedlake.plugins import serving_plugins
    from fedlake.runtime import settle_heap, stop_on_sigterm
    from fedlake.silos import data_dir

    catalog = settings.catalog(args)
    policy = settings.policy(args, catalog)
    if settings.deployment(args) == "prod":
        from fedlake.agent.readiness import require_configuration

        require_configuration(catalog, policy, args.silo, args.tls_cert, args.tls_key)
    require_lake_folder(catalog.silo(args.silo), settings.deployment(args), data_dir())
    agent = build_agent(catalog, policy, args.silo, settings.deployment(args), data_dir(), plugins=serving_plugins())
    scheme = "grpc+tls" if args.tls_cert else "grpc+tcp"
    server = AgentFlightServer(agent, f"{scheme}://{args.host}:{args.port}", args.tls_cert, args.tls_key)
    settle_heap()
    stop_on_sigterm(server)
    print(f"agent {args.silo} ({agent.spec.kind}, {agent.spec.region}) listening on {scheme}://{args.host}:{server.port}", flush=True)
    server.serve()
    return 0


def cmd_agent_certs(args: argparse.Namespace) -> int:
    from fedlake.agent.tls import make_tls

    paths = make_tls(args.out, tuple(args.host or ("localhost", "127.0.0.1")), days=args.days)
    print(f"CA certificate (give it to the coordinator and to every agent as FEDLAKE_AGENT_CA): {paths['ca']}")
    print(f"agent certificate and key (for --tls-cert / --tls-key): {paths['cert']} {paths['key']}")
    return 0
