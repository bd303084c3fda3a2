"""The agent's built-in actions about its silo: tables, schemas, statistics, watermarks, EXPLAIN,
PII discovery and in-silo materialization. Each checks the caller's role; those that compute over
data compute over the caller's masked relations, as a query would."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from fedlake.agent.fragments import decision_of
from fedlake.agent.gate import EgressDenied
from fedlake.agent.protocol import Decision, ExplainFragment
from fedlake.agent.pii import pii_scan
from fedlake.arrow_types import sql_type
from fedlake.errors import FedlakeError
from fedlake.silos.base import check_table_name, stats_from_row, stats_sql

if TYPE_CHECKING:
    from fedlake.agent.agent import Caller, SiloAgent


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def register_silo_actions(agent: SiloAgent) -> None:
    def table_of(body: dict[str, Any]) -> str:
        """A table the silo holds, by plain name: never a path, never an unknown name."""
        try:
            name = check_table_name(str(body["table"]))
        except ValueError as exc:
            raise EgressDenied(None, f"agent {agent.spec.name}: {exc}") from None
        if name not in agent.connector.list_tables():
            raise FedlakeError(f"silo {agent.spec.name} has no table '{name}'")
        return name

    def list_tables(caller: Caller, body: dict[str, Any]) -> list[str]:
        agent.check_role(caller, "query", "list the silo's tables")
        return agent.connector.list_tables()

    def tables(caller: Caller, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """What a planner needs of a silo for one query, in one call: for those of the named tables
        the silo holds, each column's SQL type and, for a purpose, the table's rows and the distinct
        values of the columns that leave as they are or as pseudonyms (as many as their values) for
        the caller's region; of any other column, nothing."""
        agent.check_role(caller, "query", "read schemas")
        names, purpose = body.get("names"), body.get("purpose")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise FedlakeError(f"agent {agent.spec.name}: action tables needs 'names', a list of table names")
        if purpose is not None:
            agent.check_purpose(caller, str(purpose))
        present = set(agent.connector.list_tables())
        found: dict[str, dict[str, Any]] = {}
        for name in sorted(set(names) & present):
            types = {f.name: sql_type(f.type) for f in agent.connector.schema(name)}
            found[name] = {"columns": types}
            if purpose is None:
                continue
            derived = {} if name in agent.spec.tables else {name: agent.connector.annotations(name) or {}}
            mask = agent.gate.masks({name: types}, derived, str(purpose), caller.region)[name]
            counted = {c for c, m in mask.columns.items() if m.action in ("allow", "pseudonymize")}
            stats = agent.connector.column_statistics(name)
            found[name].update(rows=stats.rows, distinct={c: n for c, n in stats.distinct.items() if c in counted})
        return found

    def schema(caller: Caller, body: dict[str, Any]) -> list[list[str]]:
        """[name, Arrow type, the SQL type the planner qualifies the column as] per column."""
        agent.check_role(caller, "query", "read schemas")
        return [[f.name, str(f.type), sql_type(f.type)] for f in agent.connector.schema(table_of(body))]

    def row_count(caller: Caller, body: dict[str, Any]) -> int:
        agent.check_role(caller, "query", "count rows")
        return agent.connector.row_count(table_of(body))

    def statistics(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """Statistics over the caller's masked relation of a table, computed in place: denied and
        aggregate-only columns show only their name and type (declared in silos.yaml anyway); min
        and max leave only for columns allowed as they are."""
        table = table_of(body)
        agent.check_purpose(caller, body["purpose"])
        region = agent.destination(caller, body.get("destination"))
        types = {f.name: sql_type(f.type) for f in agent.connector.schema(table)}
        derived = {} if table in agent.spec.tables else {table: agent.connector.annotations(table) or {}}
        mask = agent.gate.masks({table: types}, derived, body["purpose"], region)[table]
        counted = [name for name, column in mask.columns.items() if column.action not in ("deny", "aggregate")]
        hidden = [{"name": name, "type": types[name], "distinct": None, "null_fraction": None, "min": None, "max": None,
                   "masked": column.action} for name, column in mask.columns.items() if name not in counted]
        if not counted:
            return {"table": table, "rows": None, "bytes": None, "columns": hidden}
        plan = agent.plan(caller, f"SELECT {', '.join(map(_quote, counted))} FROM {_quote(table)}", body["purpose"], region)
        shown = agent.fragments.planned_schema(plan)
        row = agent.connector.execute(stats_sql(f"({plan.sql}) AS q", shown, _quote), params=plan.params).read_all()
        stats = stats_from_row(table, shown, tuple(row.to_pylist()[0].values()), 0)
        columns = []
        for c in stats.columns:
            revealable = mask.columns[c.name].action == "allow"
            columns.append({"name": c.name, "type": c.type, "distinct": c.distinct, "null_fraction": c.null_fraction,
                            "min": c.min if revealable else None, "max": c.max if revealable else None})
        return {"table": table, "rows": stats.rows, "bytes": None, "columns": columns + hidden}

    def materialize(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """Materialize inside the silo, over the caller's masked relations for its purpose: nothing
        leaves, and what is made holds only values the caller could have received. The table
        records its purpose, its maker and each column's base columns and masks, so that reading it
        back is decided as strictly as reading its sources."""
        agent.check_role(caller, "materialize", "materialize tables in the silo")
        table, sql, purpose = check_table_name(str(body["table"])), body["sql"], body["purpose"]
        agent.check_purpose(caller, purpose)
        if table in agent.spec.tables:
            raise EgressDenied(None, f"{agent.spec.name}.{table} is a source table declared in {agent.spec.source_file}; "
                               "it may not be replaced")
        if table in agent.connector.list_tables():
            maker = (agent.connector.annotations(table) or {}).get("by")
            if maker != caller.identity:
                raise EgressDenied(None, f"{agent.spec.name}.{table} was made by '{maker}'; only its maker may replace it")
        plan = agent.plan_for(caller, sql, purpose, caller.region, operation="materialize")
        if plan.dp is not None:
            raise EgressDenied(plan, f"{agent.spec.name}: aggregate-only columns leave only as differentially private "
                               "releases, which are not materialized")
        lineage = {}
        for verdict in plan.columns:
            uses = []
            for source in verdict.sources:
                _, source_table, column = source.split(".")
                mask = plan.masks[source_table].columns[column]
                uses.append({"table": source_table, "column": column, "mask": mask.action})
            lineage[verdict.output] = uses
        annotations = {"lineage": lineage, "purpose": purpose, "by": caller.identity, "region": caller.region}
        made = agent.connector.materialize(table, plan.sql, annotations, params=plan.params)
        agent.ledger.record(
            requester=caller.identity, purpose=purpose, silo=agent.spec.name, destination=agent.spec.region,
            operation="materialize", fragment=sql, columns=[c.as_dict() for c in plan.columns], decision="in_silo",
        )
        return {"silo": agent.spec.name, "table": table, "columns": [[f.name, str(f.type)] for f in made.schema],
                "rows": made.rows, "bytes": made.bytes, "version": made.version}

    def explain(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """The gate's decision for a request, for any region (what the policy says is no secret);
        nothing runs, nothing leaves but the decision and the masked statement's text."""
        request = ExplainFragment.from_fields(body)
        agent.check_role(caller, "query", "explain requests")
        agent.check_purpose(caller, request.purpose)
        region = request.region or caller.region
        try:
            plan = agent.plan_for(caller, request.sql, request.purpose, region, operation="explain")
        except EgressDenied as exc:
            return Decision(exc.plan.columns if exc.plan else (), denied=str(exc)).as_fields()
        return decision_of(plan).as_fields()

    def watermark(caller: Caller, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Each declared table's row count and latest timestamp, computed in place: a new-data sensor
        compares them tick to tick."""
        agent.check_role(caller, "query", "read watermarks")
        marks = {}
        present = set(agent.connector.list_tables())
        for table in agent.spec.tables:
            if table not in present:
                continue
            columns = agent.connector.schema(table)
            stamp = next((f.name for f in columns if pa.types.is_timestamp(f.type)), None)
            latest = f", CAST(max({_quote(stamp)}) AS VARCHAR) AS latest" if stamp else ", NULL AS latest"
            row = agent.connector.execute(f"SELECT count(*) AS n{latest} FROM {_quote(table)}").read_all().to_pylist()[0]
            marks[table] = {"rows": int(row["n"]), "latest": row["latest"]}
        return marks

    def scan(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        agent.check_role(caller, "coordinate", "scan for undeclared personal data")
        return pii_scan(agent.connector, agent.spec, table_of(body))

    def egress(caller: Caller, body: dict[str, Any]) -> dict[str, int]:
        agent.check_role(caller, "query", "read egress counters")
        rows, nbytes = agent.egress.snapshot()
        return {"rows": rows, "bytes": nbytes}

    for name, handler in {
        "list_tables": list_tables, "tables": tables, "schema": schema, "row_count": row_count, "statistics": statistics,
        "materialize": materialize, "explain": explain, "watermark": watermark, "pii_scan": scan, "egress": egress,
    }.items():
        agent.register_action(name, handler)
