"""A residual the planner placed in this silo: because running it here moves fewer bytes than
running it at the governed zone, or because only here may it see this silo's rows at all.

The other silos' fragments come straight from their agents, under capabilities whose senders
checked that the policy treats them here as at the governed zone. The silo's own fragments stay
here, in one of two ways:

- gated (the default): exactly as if they were leaving for the governed zone. The residual then
  reads nothing the governed zone could not have received itself, and its result may go there.
- raw (`"raw": true`, where the policy lets some of them leave only aggregated): as they are,
  except that a column the policy pseudonymizes or generalizes is rewritten as it is read (the key
  at the source), so that it meets other silos' pseudonyms as the governed zone would. The
  residual's result then passes this silo's gate like any fragment, its lineage traced through the
  residual into the silo's own columns (whose groups must hold k subjects) while the other silos'
  columns, and the rewritten ones, count as released. No semi-join filter is built from raw rows.

It runs in a closed DuckDB; the semi-join filters its remote fragments wait for are built here and
sent to their agents.

The request, from the coordinator:
  {"id", "purpose", "destination": the governed zone's region, "sql": the residual, "raw": bool,
   "local": [{"name", "sql"}], "imports": [{"name", "silo", "location", "ticket", "schema": {column: SQL type}}],
   "semijoins": [{"condition", "probe": an import's name, "keys": an id, "build": [[name, column]],
                  "limit": the most bytes the filter may cost}]}
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from sqlglot import exp

from fedlake.agent.gate import SUBJECTS_COLUMN, DerivedColumn, EgressDenied, EgressPlan, rewrite_batch
from fedlake.agent.lineage import DIRECT, analyse, parse_query
from fedlake.agent.peers import Peer, open_peer
from fedlake.arrow_types import sql_type
from fedlake.bloom import filter_if_it_pays
from fedlake.errors import FedlakeError
from fedlake.residual import Workspace, check_residual
from fedlake.silos.base import counted

if TYPE_CHECKING:
    from fedlake.agent.agent import Caller, SiloAgent

RESIDUAL_MEMORY = "2GB"
KEPT_REPORTS = 256
SUBJECT_OUTPUT = "__fl_subject"


def with_subject(agent: SiloAgent, sql: str) -> str:
    """A raw fragment that also returns its rows' subject (the first table it reads that declares
    one), so that the residual's gate can count subjects per group. The residual never sees the
    column: the planner expanded its stars before the column was added."""
    tree = parse_query(sql)
    if (not isinstance(tree, exp.Select) or tree.args.get("group") or tree.args.get("distinct")
            or any(e.find(exp.AggFunc) for e in tree.expressions) or SUBJECT_OUTPUT in tree.named_selects):
        return sql
    from_ = tree.args.get("from_")
    for table in [from_.this if from_ else None, *(j.this for j in tree.args.get("joins") or [])]:
        if isinstance(table, exp.Table) and table.name in agent.policy.subjects:
            subject = exp.column(agent.policy.subjects[table.name], table=table.alias_or_name, quoted=True)
            return tree.select(exp.alias_(subject, SUBJECT_OUTPUT, quoted=True), copy=True).sql("duckdb")
    return sql


def raw_residual_plan(
    agent: SiloAgent,
    caller: Caller,
    request: dict[str, Any],
    local: dict[str, str],
    rewrites: dict[str, dict[str, tuple[str, dict | None]]],
    ledger: bool = True,
) -> EgressPlan:
    """The gate's plan for a residual over this silo's raw fragments (`local`: name -> SQL, as they
    will run) and other silos' released ones; `rewrites` receives, per raw fragment, the columns to
    rewrite as they are read. A refusal is raised naming the column and the rule (and ledgered,
    unless only explained)."""
    purpose, final, sql = request["purpose"], request["destination"], request["sql"]
    try:
        schema: dict[str, dict[str, str]] = {}
        derived: dict[str, dict[str, DerivedColumn]] = {}
        for name, fragment in local.items():
            schema[name], derived[name], rewrites[name] = _raw_fragment(agent, fragment, purpose, final)
        for item in request.get("imports", []):
            schema[item["name"]] = {str(c): str(t) for c, t in item["schema"].items()}
            derived[item["name"]] = {str(c): DerivedColumn(()) for c in item["schema"]}  # released by their own silo
        return agent.gate.plan(sql, caller.identity, purpose, final, schema, derived)
    except EgressDenied as exc:
        if ledger:
            agent.ledger.record(
                requester=caller.identity, purpose=purpose, silo=agent.spec.name, destination=final, operation="residual",
                fragment=sql, columns=[c.as_dict() for c in exc.plan.columns] if exc.plan else [], decision="denied",
            )
        raise


def _raw_fragment(
    agent: SiloAgent, fragment: str, purpose: str, final: str
) -> tuple[dict[str, str], dict[str, DerivedColumn], dict[str, tuple[str, dict | None]]]:
    """A raw fragment's columns as the residual's gate sees them: their SQL types, the base columns
    each is made of, and the rewrites due at the source. A column the policy pseudonymizes or
    generalizes is rewritten as it is read, exactly as the governed zone would receive it (so it
    meets other silos' pseudonyms), and counts as released; a value computed from one is refused."""
    tables, made_here = agent.tables_for(fragment)
    columns: dict[str, DerivedColumn] = {}
    rewrites: dict[str, tuple[str, dict | None]] = {}
    for column in analyse(fragment, tables).columns:
        uses = agent.gate.base_uses(column.uses, made_here)
        columns[column.name] = DerivedColumn(tuple(uses))
        for use in uses if column.name != SUBJECT_OUTPUT else ():  # subjects are only counted
            if use.mode == "unknown":
                continue  # the residual's gate refuses it, if it reaches the result
            decision = agent.policy.decide(agent.spec.name, use.table, use.column, final, purpose)
            if decision.action not in ("pseudonymize", "generalize"):
                continue
            if len(uses) != 1 or use.mode != DIRECT:
                raise EgressDenied(None, f"egress from {agent.spec.name} to {final} for {purpose} denied: the residual may "
                                   f"read {agent.spec.name}.{use.table}.{use.column} only {decision.action}d as itself, "
                                   f"and '{column.name}' is computed from it [rule {decision.rule}]")
            rewrites[column.name] = (decision.action, decision.generalize)
            columns[column.name] = DerivedColumn(())
    empty = agent.connector.execute(f"SELECT * FROM ({fragment}) AS q LIMIT 0")
    types = {f.name: "VARCHAR" if f.name in rewrites else sql_type(f.type) for f in empty.schema}
    return types, columns, rewrites


def _rewritten(reader: pa.RecordBatchReader, rewrites: dict[str, tuple[str, dict | None]], key: bytes) -> pa.RecordBatchReader:
    """A raw fragment with its pseudonymized and generalized columns rewritten as they are read."""
    if not rewrites:
        return reader
    schema = pa.schema([pa.field(f.name, pa.string()) if f.name in rewrites else f for f in reader.schema])

    return pa.RecordBatchReader.from_batches(schema, (rewrite_batch(batch, schema, rewrites, key) for batch in reader))


def run_placed_residual(agent: SiloAgent, caller: Caller, request: dict[str, Any]) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    try:
        rid, purpose, final, sql = str(request["id"]), request["purpose"], request["destination"], request["sql"]
        local, imports, semijoins = request.get("local", []), request.get("imports", []), request.get("semijoins", [])
        names = [item["name"] for item in [*local, *imports]]
    except (KeyError, TypeError) as exc:
        raise FedlakeError(f"agent {agent.spec.name}: a residual request needs {exc}") from None
    if caller.transfer:
        raise FedlakeError(f"agent {agent.spec.name}: a transfer capability does not run residuals")
    agent.check_purpose(caller, purpose)
    if len(set(names)) != len(names) or any(s.get("probe") not in {i["name"] for i in imports} for s in semijoins):
        raise FedlakeError(f"agent {agent.spec.name}: a residual request names a fragment twice or a semi-join without its fragment")
    check_residual(sql, set(names))

    # every fragment and the residual are planned (and a refusal ledgered and raised) before anything runs
    raw = bool(request.get("raw"))
    if raw:
        kept = {item["name"] for item in local}
        if any(name in kept for s in semijoins for name, _ in s["build"]):
            raise FedlakeError(f"agent {agent.spec.name}: a semi-join filter may not be built from the silo's raw rows")
        local = [{**item, "sql": with_subject(agent, item["sql"])} for item in local]
    rewrites: dict[str, dict[str, tuple[str, dict | None]]] = {}
    gate_plan = raw_residual_plan(agent, caller, request, {i["name"]: i["sql"] for i in local}, rewrites) if raw else None
    plans = [(item["name"], None if raw else agent.plan(caller, item["sql"], purpose, final)) for item in local]
    report: dict[str, Any] = {"requester": caller.identity, "fragments": {}, "filters": {}, "notes": {}}
    lock = threading.Lock()
    workspace = Workspace(RESIDUAL_MEMORY)
    peers: dict[str, Peer] = {}
    loaded: dict[str, Future] = {}

    def load(name: str, source: Callable[[], pa.RecordBatchReader]) -> None:
        started = time.perf_counter()

        def arrived(rows: int, nbytes: int) -> None:
            with lock:
                report["fragments"][name] = {"rows": rows, "bytes": nbytes, "seconds": time.perf_counter() - started}

        workspace.load(name, source(), arrived)

    def gated(plan: EgressPlan | None, name: str, sql: str) -> Callable[[], pa.RecordBatchReader]:
        if plan is None:  # raw: it never leaves the silo
            return lambda: _rewritten(agent.connector.execute(sql), rewrites.get(name, {}), agent.gate.key)
        return lambda: pa.RecordBatchReader.from_batches(*agent.gated(caller, plan))

    def send_keys(semijoin: dict[str, Any]) -> None:
        bloom, why = None, ""
        try:
            for name, _ in semijoin["build"]:
                loaded[name].result()
            keys = workspace.distinct([(name, column) for name, column in semijoin["build"]])
            bloom, why = filter_if_it_pays(keys, float(semijoin["limit"]), semijoin["condition"])
        finally:
            # the probe waits for this message whatever happened to its keys
            peers[semijoin["probe"]].send_keys(str(semijoin["keys"]), bloom.to_dict() if bloom else None)
        with lock:
            if bloom is not None:
                report["filters"].setdefault(semijoin["probe"], {})[semijoin["condition"]] = [bloom.keys, bloom.nbytes]
            if why:
                report["notes"].setdefault(semijoin["probe"], []).append(why)

    try:
        for item in imports:
            peers[item["name"]] = open_peer(item["location"], item["ticket"], agent.peer_ca)
        with ThreadPoolExecutor(max_workers=len(plans) + len(imports) + len(semijoins) or 1) as pool:
            for (name, plan), item in zip(plans, local):
                loaded[name] = pool.submit(load, name, gated(plan, name, item["sql"]))
            for name, peer in peers.items():
                loaded[name] = pool.submit(load, name, peer.fetch)
            sent = [pool.submit(send_keys, semijoin) for semijoin in semijoins]
            for future in [*loaded.values(), *sent]:
                future.result()
    except BaseException:
        workspace.close()
        raise
    finally:
        for peer in peers.values():
            peer.close()

    over = [f"-- over {name}: {item['sql']}{' (raw, in the silo)' if raw else ''}" for (name, _), item in zip(plans, local)]
    over += [f"-- over {item['name']}: sent by silo {item['silo']}'s agent" for item in imports]
    verdicts = gate_plan.columns if gate_plan else [c for _, plan in plans for c in plan.columns]
    columns = [c.as_dict() for c in verdicts]
    decision = "rewritten" if any(c["action"] != "allow" for c in columns) else "allowed"

    def finished(rows: int, nbytes: int) -> None:
        agent.ledger.record(
            requester=caller.identity, purpose=purpose, silo=agent.spec.name, destination=final, operation="residual",
            fragment="\n".join([sql, *over]), columns=columns, decision=decision, rows=rows, nbytes=nbytes,
        )
        while len(agent.residual_reports) >= KEPT_REPORTS:
            agent.residual_reports.pop(next(iter(agent.residual_reports)))
        agent.residual_reports[rid] = report

    if gate_plan is None:
        result = workspace.run(sql, lambda rows, nbytes: None)
        return result.schema, counted(result, finished, each=agent.egress.add)
    if gate_plan.k and gate_plan.small_groups == "refuse":
        smallest = workspace.smallest_group(gate_plan.sql, SUBJECTS_COLUMN)
        if smallest is not None and smallest < gate_plan.k:
            workspace.close()
            agent.ledger.record(
                requester=caller.identity, purpose=purpose, silo=agent.spec.name, destination=final, operation="residual",
                fragment="\n".join([sql, *over]), columns=columns, decision="denied",
            )
            raise EgressDenied(gate_plan, f"egress from {agent.spec.name} denied: a group of the residual has {smallest} "
                               f"distinct subjects, under k={gate_plan.k} [rule {agent.policy.path}: aggregate.small_groups = refuse]")
    result = workspace.run(gate_plan.sql, lambda rows, nbytes: None)
    schema, batches = agent.gate.apply(gate_plan, result.schema, iter(result))
    return schema, counted(batches, finished, each=agent.egress.add)


def explain_placed_residual(agent: SiloAgent, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
    """Whether a residual over this silo's raw fragments may send its result to the governed zone,
    and the gate's decision per column; nothing runs, nothing is ledgered."""
    agent.check_purpose(caller, request["purpose"])
    check_residual(request["sql"], {item["name"] for item in [*request.get("local", []), *request.get("imports", [])]})
    try:
        local = {item["name"]: with_subject(agent, item["sql"]) for item in request.get("local", [])}
        plan = raw_residual_plan(agent, caller, request, local, {}, ledger=False)
    except EgressDenied as exc:
        return {"denied": str(exc), "columns": [c.as_dict() for c in exc.plan.columns] if exc.plan else []}
    return {"denied": None, "k": plan.k, "columns": [c.as_dict() for c in plan.columns]}
