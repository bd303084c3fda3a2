"""The `fedlake` command line."""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fedlake.catalog import EnvRef, default_catalog_path, load_catalog
from fedlake.errors import FedlakeError

if TYPE_CHECKING:
    from fedlake.agent import AgentClient

# Each verb imports what it needs when it runs, so a cold `fedlake query` loads neither the demo
# bank's generator nor what served agents plug in (Great Expectations, torch).


def _deployment(args: argparse.Namespace) -> str:
    return args.deployment or os.environ.get("FEDLAKE_DEPLOYMENT", "local")


def _policy(args: argparse.Namespace, catalog):
    from fedlake.policy.model import POLICIES_ENV, load_policy

    path = args.policies or os.environ.get(POLICIES_ENV) or Path(args.silos).with_name("policies.yaml")
    return load_policy(path, catalog)


def cmd_seed(args: argparse.Namespace) -> int:
    from fedlake.silos import data_dir
    from fedlake.synth.seed import seed_demo_bank

    catalog = load_catalog(args.silos)
    home = data_dir()
    report = seed_demo_bank(catalog, _deployment(args), home, args.scale, args.seed)
    print(f"seeded the demo bank (scale {report.scale:g}, seed {report.seed}) in {report.seconds:.1f}s")
    for silo, tables in report.rows.items():
        spec = catalog.silo(silo)
        counts = ", ".join(f"{t} {n:,}" for t, n in tables.items())
        print(f"  {silo:<8} ({spec.kind}, {spec.region}): {counts}")
    print(f"  ground truth (outside every silo): {report.truth_dir}")
    return 0


def cmd_silos(args: argparse.Namespace) -> int:
    from fedlake.silos import open_silo

    catalog = load_catalog(args.silos)
    for name, spec in catalog.silos.items():
        with open_silo(spec, _deployment(args)) as connector:
            tables = connector.list_tables()
            print(f"{name} ({spec.kind}, region {spec.region}):")
            for table in tables:
                declared = "declared" if table in spec.tables else "derived"
                print(f"  {table:<20} {connector.row_count(table):>12,} rows  [{declared}]")
    return 0


def cmd_agent_serve(args: argparse.Namespace) -> int:
    # Fragments from peer agents arrive over Flight with buffers at any alignment, which costs nothing
    # on the CPUs agents run on; Acero (under DuckDB's Arrow scan) would print a warning per batch.
    os.environ.setdefault("ACERO_ALIGNMENT_HANDLING", "ignore")
    from fedlake.agent import build_agent
    from fedlake.agent.server import AgentFlightServer
    from fedlake.plugins import serving_plugins
    from fedlake.runtime import settle_heap, stop_on_sigterm
    from fedlake.silos import data_dir

    catalog = load_catalog(args.silos)
    policy = _policy(args, catalog)
    deployment = _deployment(args)
    agent = build_agent(catalog, policy, args.silo, deployment, data_dir(), plugins=serving_plugins())
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


def _single_silo_sql(sql: str, catalog, silo: str | None) -> tuple[str, str]:
    """`silo.table` names -> the silo and the fragment over its own table names."""
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="duckdb")
    named = {t.db for t in tree.find_all(exp.Table) if t.db}
    silos = named | ({silo} if silo else set())
    if len(silos) != 1:
        raise FedlakeError(f"explain one silo at a time: name tables as silo.table (found silos: {sorted(silos) or 'none'})")
    [silo] = silos
    catalog.silo(silo)
    for table in tree.find_all(exp.Table):
        if table.db:
            table.set("db", None)
    return silo, tree.sql("duckdb")


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from sqlglot import exp

    from fedlake.agent.gate import EgressDenied, EgressGate
    from fedlake.agent.subset import Refused, parse_subset

    catalog = load_catalog(args.silos)
    policy = _policy(args, catalog)
    silo, fragment = _single_silo_sql(args.sql, catalog, args.silo)
    spec = catalog.silo(silo)
    gate = EgressGate(spec, policy, key=b"explain")
    try:
        tree = parse_subset(fragment)
        named = {t.name for t in tree.find_all(exp.Table)} - {c.alias_or_name for c in tree.find_all(exp.CTE)}
        unknown = sorted(named - set(spec.tables))
        if unknown:
            raise Refused(f"silo {silo} declares no table '{unknown[0]}'")
        tables = {name: {column: "VARCHAR" for column in spec.tables[name].columns} for name in named}
        plan = gate.plan(tree, "explain", args.purpose, args.to, tables, {})
    except (EgressDenied, Refused) as exc:
        for name, mask in gate.masks(tables, {}, args.purpose, args.to).items() if "tables" in locals() else ():
            print(f"masks of {silo}.{name} for {args.purpose} to {args.to}:")
            for column in mask.columns.values():
                print(f"  {column.column:<22} {column.action.upper():<12} rule {column.rule}")
        print(f"DENIED: {exc}")
        return 1
    print(plan.explain())
    print("ALLOWED" if all(c.action == "allow" for c in plan.columns) else "ALLOWED after rewriting in the silo")
    return 0


class _ClientsOnDemand(Mapping[str, "AgentClient"]):
    """The coordinator's client of each silo's agent, opened when the query first uses that silo, so
    a query of one lake neither starts the embedded PostgreSQL nor dials agents it never asks."""

    def __init__(self, silos: list[str], open_client: Callable[[str], AgentClient]):
        self._silos = silos
        self._open_client = open_client
        self._opened: dict[str, AgentClient] = {}
        self._lock = threading.Lock()  # fragments run on several threads

    def __getitem__(self, silo: str) -> AgentClient:
        if silo not in self._silos:
            raise KeyError(silo)
        with self._lock:
            if silo not in self._opened:
                self._opened[silo] = self._open_client(silo)
            return self._opened[silo]

    def __contains__(self, silo: object) -> bool:
        return silo in self._silos

    def __iter__(self) -> Iterator[str]:
        return iter(self._silos)

    def __len__(self) -> int:
        return len(self._silos)


def agent_clients(catalog, policy, deployment: str, home: Path) -> Mapping[str, AgentClient]:
    """The coordinator's clients of every silo's agent: over Flight where the deployment names an
    agent location, else in-process, serving queries only (no plug-ins: a query needs none)."""
    from fedlake.agent import FlightAgentClient, client_token, local_agent_client

    def open_client(name: str) -> AgentClient:
        agent = catalog.silo(name).agents.get(deployment)
        if not agent:
            return local_agent_client(catalog, policy, name, home)
        where = f"{catalog.path} (silos.{name}.agent.{deployment})"
        location = agent["location"].resolve(where) if isinstance(agent["location"], EnvRef) else agent["location"]
        token = client_token(policy, "coordinator", deployment, home)
        return FlightAgentClient(name, location, token, os.environ.get("FEDLAKE_AGENT_CA"))

    return _ClientsOnDemand(list(catalog.silos), open_client)


def cmd_query(args: argparse.Namespace) -> int:
    if os.environ.get("FEDLAKE_COORDINATOR"):  # a served coordinator: send the SQL there (fedlake.serve.remote)
        from fedlake.serve.remote import cli_query

        return cli_query(args, _deployment(args), lambda: _policy(args, load_catalog(args.silos)))
    from fedlake.agent import ledger_for
    from fedlake.query import Federation, render
    from fedlake.silos import data_dir

    catalog = load_catalog(args.silos)
    policy = _policy(args, catalog)
    federation = Federation(catalog, agent_clients(catalog, policy, _deployment(args), data_dir()), site=args.site,
                            witness=ledger_for(data_dir(), "coordinator"))
    if args.explain:
        print(render(federation.plan(args.sql, args.purpose), catalog))
        return 0
    plan = federation.plan(args.sql, args.purpose, with_estimates=args.explain_analyze)
    table = federation.stream(plan).read_all()
    plan.result_rows, plan.result_bytes = table.num_rows, table.nbytes
    federation.witness_heads(plan)
    if args.explain_analyze:
        print(render(plan, catalog, analyze=True))
        return 0
    from fedlake.display import render_table

    print(render_table(table, args.max_rows))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from fedlake.runtime import settle_heap
    from fedlake.serve.coordinator import Coordinator
    from fedlake.serve.flightsql import serve
    from fedlake.silos import data_dir

    catalog = load_catalog(args.silos)
    coordinator = Coordinator(catalog, _policy(args, catalog), _deployment(args), data_dir())
    settle_heap()
    serve(coordinator, args.host, args.port, args.tls_cert, args.tls_key)
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from fedlake.agent import ledger_for
    from fedlake.signing import public_keys
    from fedlake.silos import data_dir

    home = data_dir()
    result = ledger_for(home).verify(public_keys(home), require_signatures=args.require_signatures)
    print(result)
    return 0 if result.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedlake", description="Query, check and train on data where it lies.")
    parser.add_argument("--silos", type=Path, default=None, help="silos.yaml (default: $FEDLAKE_SILOS or ./silos.yaml)")
    parser.add_argument("--deployment", choices=("local", "prod"), default=None, help="default: $FEDLAKE_DEPLOYMENT or local")
    parser.add_argument("--policies", type=Path, default=None, help="policies.yaml (default: $FEDLAKE_POLICIES, else beside silos.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    seed = sub.add_parser("seed", help="generate the demo bank into the silos")
    seed.add_argument("--scale", type=float, default=1.0, help="1 = about 200k transactions and 10k loans")
    seed.add_argument("--seed", type=int, default=42)
    seed.set_defaults(run=cmd_seed)

    silos = sub.add_parser("silos", help="list every silo's tables and row counts, counted in place")
    silos.set_defaults(run=cmd_silos)

    agent = sub.add_parser("agent", help="silo agents").add_subparsers(dest="agent_command", required=True)
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

    policy = sub.add_parser("policy", help="data-regulation policy").add_subparsers(dest="policy_command", required=True)
    explain = policy.add_parser("explain", help="the decision for every output column of a query")
    explain.add_argument("sql", help="SQL over silo.table names (one silo)")
    explain.add_argument("--purpose", required=True)
    explain.add_argument("--to", required=True, help="destination region")
    explain.add_argument("--silo", default=None)
    explain.set_defaults(run=cmd_policy_explain)

    query = sub.add_parser("query", help="run federated SQL over silo.table names")
    query.add_argument("sql")
    query.add_argument("--purpose", required=True)
    mode = query.add_mutually_exclusive_group()
    mode.add_argument("--explain", action="store_true", help="show the plan, run nothing")
    mode.add_argument("--explain-analyze", action="store_true", help="run, then show the plan with actual rows and bytes")
    query.add_argument("--max-rows", type=int, default=40)
    query.add_argument("--site", default="auto",
                       help="where the residual runs: auto (the fewest bytes the policy allows), governed, or a silo")
    query.set_defaults(run=cmd_query)

    served = sub.add_parser("serve", help="run the coordinator as an Arrow Flight SQL server (ADBC, JDBC, BI tools)")
    served.add_argument("--host", default="127.0.0.1")
    served.add_argument("--port", type=int, default=32010, help="0 picks a free port (printed)")
    served.add_argument("--tls-cert", type=Path, default=None)
    served.add_argument("--tls-key", type=Path, default=None)
    served.set_defaults(run=cmd_serve)

    audit = sub.add_parser("audit", help="the audit ledger").add_subparsers(dest="audit_command", required=True)
    verify = audit.add_parser("verify", help="check every chain's hashes, signatures and witnessed heads; names what is broken or missing")
    verify.add_argument("--require-signatures", action="store_true",
                        help="fail on unsigned entries and on chains without a public key ($FEDLAKE_LEDGER_KEYS or <data>/keys)")
    verify.set_defaults(run=cmd_audit_verify)
    return parser


DEBUG_ENV = "FEDLAKE_DEBUG"  # set: an unexpected error shows its traceback instead of one line
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*m")


def _one_line(exc: BaseException) -> str:
    """An error's message on one line: some (a SQL parser's) span lines and underline with ANSI codes."""
    return " ".join(_TERMINAL_CODES.sub("", str(exc)).split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.silos = args.silos or default_catalog_path()
        return args.run(args)
    except FedlakeError as exc:
        print(f"fedlake: error: {_one_line(exc)}", file=sys.stderr)
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
        print(f"fedlake: error: unexpected {type(exc).__name__}: {_one_line(exc)} (set {DEBUG_ENV}=1 for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
