"""`fedlake query`: federated SQL over silo.table names, as the identity of --client or of the
token in FEDLAKE_TOKEN, through the agents (in-process, over Flight) or a served coordinator."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fedlake.cli import settings
from fedlake.cli.results import FORMATS, TABLE_ROWS

COORDINATOR_ENV = "FEDLAKE_COORDINATOR"  # set: the SQL goes to that served coordinator (fedlake.serve.remote)


def register(verbs: argparse._SubParsersAction) -> None:
    query = verbs.add_parser("query", help="run federated SQL over silo.table names")
    query.add_argument("sql")
    query.add_argument("--purpose", required=True)
    query.add_argument("--client", default=None,
                       help="ask as this client of policies.yaml (its token: its token_env; made locally). "
                            "Default: the token in $FEDLAKE_TOKEN, else coordinator")
    mode = query.add_mutually_exclusive_group()
    mode.add_argument("--explain", action="store_true", help="show the plan, run nothing")
    mode.add_argument("--explain-analyze", action="store_true", help="run, then show the plan with actual rows and bytes")
    query.add_argument("--format", choices=FORMATS, default="table",
                       help="table (floats rounded for display), csv, json (one object per line), parquet (needs --output)")
    query.add_argument("--output", type=Path, default=None, help="write the result to this file (default: stdout)")
    query.add_argument("--max-rows", type=_positive, default=None,
                       help=f"fetch at most this many rows (default: {TABLE_ROWS} for a table, every row otherwise)")
    query.add_argument("--site", default="auto",
                       help="where the residual runs: auto (the fewest bytes the policy allows), governed, or a silo")
    query.set_defaults(run=cmd_query)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of rows, got {value}")
    return value


def row_limit(args: argparse.Namespace) -> int | None:
    if args.max_rows is not None:
        return args.max_rows
    return TABLE_ROWS if args.format == "table" and args.output is None else None


def with_row_limit(sql: str, limit: int) -> str:
    """`sql` asking for at most `limit` rows: a LIMIT the planner pushes into the silo where one
    silo answers, and that stops the residual otherwise. SQL the planner will refuse is left as
    it is, for the planner to say why."""
    from sqlglot import exp
    from sqlglot.errors import ParseError

    from fedlake.sql_text import SqlTooComplex, parse_sql

    try:
        statements = parse_sql(sql)
    except (ParseError, SqlTooComplex):
        return sql
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        return sql
    tree = statements[0]
    if tree.args.get("fetch") is not None:
        return sql
    current = tree.args.get("limit")
    if current is not None:
        value = current.expression if isinstance(current, exp.Limit) else None
        if not (isinstance(value, exp.Literal) and value.is_int) or int(value.this) <= limit:
            return sql
    return tree.limit(limit, copy=True).sql("duckdb")


def cmd_query(args: argparse.Namespace) -> int:
    limit = None if args.explain or args.explain_analyze else row_limit(args)
    sql = with_row_limit(args.sql, limit + 1) if limit is not None else args.sql  # one more: are there more?
    if os.environ.get(COORDINATOR_ENV):
        return _query_served(args, sql, limit)
    from fedlake.agent import ledger_for
    from fedlake.cli.clients import agent_clients, require_lake_folder
    from fedlake.cli.identity import choose_identity
    from fedlake.cli.results import write_result
    from fedlake.query import GOVERNED, Federation, render
    from fedlake.silos import data_dir

    catalog = settings.catalog(args)
    policy = settings.policy(args, catalog)
    deployment, home = settings.deployment(args), data_dir()
    for spec in catalog.silos.values():  # before anything is written under a FEDLAKE_HOME that may be wrong
        if not spec.agents.get(deployment):
            require_lake_folder(spec, deployment, home)
    identity = choose_identity(policy, args.client, deployment, home)
    # a residual in a silo, and the transfers to it, are the coordinate role's; others' queries end here
    site = args.site if args.site != "auto" or identity.holds("coordinate") else GOVERNED
    federation = Federation(catalog, agent_clients(catalog, policy, deployment, home, identity.token), site=site,
                            witness=ledger_for(home, "coordinator"))
    if args.explain:
        print(render(federation.plan(sql, args.purpose), catalog))
        return 0
    plan = federation.plan(sql, args.purpose, with_estimates=args.explain_analyze)
    reader = federation.stream(plan)
    if args.explain_analyze:
        table = reader.read_all()
        plan.result_rows, plan.result_bytes = table.num_rows, table.nbytes
        federation.witness_heads(plan)
        print(render(plan, catalog, analyze=True))
        return 0
    fetched = write_result(reader, args.format, args.output, limit)
    if plan.result_rows is None:  # the stream was closed at --max-rows, before it said how much it held
        plan.result_rows, plan.result_bytes = fetched.rows, fetched.nbytes
    federation.witness_heads(plan)
    return 0


def _query_served(args: argparse.Namespace, sql: str, limit: int | None) -> int:
    """The same query through the served coordinator at $FEDLAKE_COORDINATOR, as the same identity."""
    import pyarrow as pa

    from fedlake.cli.results import write_result
    from fedlake.serve.remote import CoordinatorError, cli_token, coordinator_ca, query_coordinator

    location = os.environ[COORDINATOR_ENV]
    if args.site != "auto":
        raise CoordinatorError(f"--site is chosen by the coordinator at {location}; unset {COORDINATOR_ENV} to choose it here")
    deployment = settings.deployment(args)
    if args.client is not None:
        from fedlake.cli.identity import choose_identity
        from fedlake.silos import data_dir

        token = choose_identity(settings.policy(args, settings.catalog(args)), args.client, deployment, data_dir()).token
    else:
        token = cli_token(deployment, lambda: settings.policy(args, settings.catalog(args)))
    text = f"EXPLAIN ANALYZE {sql}" if args.explain_analyze else f"EXPLAIN {sql}" if args.explain else sql
    table = query_coordinator(location, text, args.purpose, token, coordinator_ca())
    if args.explain or args.explain_analyze:
        print("\n".join(table.column("plan").to_pylist()))
        return 0
    write_result(pa.RecordBatchReader.from_batches(table.schema, table.to_batches()), args.format, args.output, limit)
    return 0
