"""`fedlake policy explain`: the decision for every output column of a query, silo by silo.

The query is cut into its per-silo fragments as the planner cuts it, and each fragment is decided
by its silo's gate for the purpose and the destination region, from silos.yaml and policies.yaml
alone: no agent is asked and no data read, so a data protection officer can run it anywhere.
"""

from __future__ import annotations

import argparse

from fedlake.cli import settings
from fedlake.cli.messages import one_line


def register(verbs: argparse._SubParsersAction) -> None:
    policy = verbs.add_parser("policy", help="data-regulation policy").add_subparsers(dest="policy_command", required=True)
    explain = policy.add_parser("explain", help="the decision for every output column of a query")
    explain.add_argument("sql", help="SQL over silo.table names (one silo or several)")
    explain.add_argument("--purpose", required=True)
    explain.add_argument("--to", required=True, help="destination region")
    explain.add_argument("--silo", default=None, help="the silo of tables named without one")
    explain.set_defaults(run=cmd_policy_explain)


def qualified(sql: str, silo: str | None) -> str:
    """`sql` with every table not named as silo.table (nor a CTE) placed in `silo`."""
    if silo is None:
        return sql
    import sqlglot
    from sqlglot import exp

    from fedlake.sql_text import parse_error_message

    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError as exc:
        from fedlake.query import PlanningError

        raise PlanningError(f"cannot parse the query: {parse_error_message(exc)}") from None
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        if not table.db and table.name not in ctes:
            table.set("db", exp.to_identifier(silo))
    return tree.sql("duckdb")


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from fedlake.errors import FedlakeError
    from fedlake.query import cut_query

    catalog = settings.catalog(args)
    policy = settings.policy(args, catalog)
    regions = sorted({spec.region for spec in catalog.silos.values()} | {catalog.governed_region})
    if args.to not in regions:
        raise FedlakeError(f"unknown region '{args.to}' in --to (regions in {catalog.path}: {', '.join(regions)})")
    if args.silo is not None:
        catalog.silo(args.silo)
    sql = qualified(args.sql, args.silo)
    schema = {name: {table: {column: "VARCHAR" for column in spec.tables[table].columns} for table in spec.tables}
              for name, spec in catalog.silos.items()}
    cut = cut_query(sql, schema, set(catalog.silos))
    decided = [_decide(catalog, policy, fragment, args.purpose, args.to) for fragment in cut.fragments]
    raw = {f.name for f, (plan, _) in zip(cut.fragments, decided) if f.partial and (plan is None or plan.dp)}
    if raw:  # as the coordinator does: a partial aggregate the policy holds back is sent as rows instead
        cut = cut_query(sql, schema, set(catalog.silos), raw=raw)
        decided = [_decide(catalog, policy, fragment, args.purpose, args.to) for fragment in cut.fragments]
    several = len(cut.fragments) > 1
    for fragment, (plan, lines) in zip(cut.fragments, decided):
        if several:
            print(f"fragment {fragment.name} ({fragment.silo}): {fragment.sql}")
        print("\n".join(lines))
    if several:
        print(f"combined at the destination ({args.to}): {cut.residual}")
    if any(plan is None for plan, _ in decided):
        return 1
    allowed = all(c.action == "allow" for plan, _ in decided for c in plan.columns)
    print("ALLOWED" if allowed else "ALLOWED after rewriting in the silo")
    return 0


def _decide(catalog, policy, fragment, purpose: str, destination: str):
    """(the gate's plan, or None if it denies; the lines that explain it) for one fragment."""
    from sqlglot import exp

    from fedlake.agent.gate import EgressDenied, EgressGate
    from fedlake.agent.subset import Refused, parse_subset

    spec = catalog.silo(fragment.silo)
    gate = EgressGate(spec, policy, key=b"explain")
    tables: dict[str, dict[str, str]] = {}
    try:
        tree = parse_subset(fragment.sql)
        named = {t.name for t in tree.find_all(exp.Table)} - {c.alias_or_name for c in tree.find_all(exp.CTE)}
        tables = {name: {column: "VARCHAR" for column in spec.tables[name].columns} for name in sorted(named)}
        plan = gate.plan(tree, "explain", purpose, destination, tables, {})
    except (EgressDenied, Refused) as exc:
        lines = []
        for name, mask in gate.masks(tables, {}, purpose, destination).items():
            lines.append(f"masks of {fragment.silo}.{name} for {purpose} to {destination}:")
            lines.extend(f"  {c.column:<22} {c.action.upper():<12} rule {c.rule}" for c in mask.columns.values())
        lines.append(f"DENIED: {one_line(str(exc))}")
        return None, lines
    return plan, [plan.explain()]
