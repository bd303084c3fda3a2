"""Running a federated query: fragments concurrently in their silos through their agents, the
residual in DuckDB over the fragments' streamed results, at the site that moves the fewest bytes
the policy allows: the governed zone, or a silo's agent (see placement).

Each fragment is planned once by its agent; the plan's ticket runs it. A fragment reduced by a
semi-join runs once the fragments its keys come from are in, with the keys attached to its ticket,
so no agent ever waits on the coordinator. Each fragment's batches are loaded into the residual's
DuckDB as they arrive (it spills to disk beyond its memory limit), so memory is bounded by the
query, not by the silos; and at most `max_streams` fragments stream at once per coordinator.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa
import sqlglot
from sqlglot import exp

from fedlake.agent.client import AgentClient
from fedlake.agent.gate import EgressDenied
from fedlake.agent.protocol import Import, LocalFragment, ResidualSemiJoin, RunResidual
from fedlake.arrow_types import arrow_width
from fedlake.audit import Ledger
from fedlake.catalog import Catalog
from fedlake.errors import FedlakeError
from fedlake.keyset import KeySet, key_family, keys_if_they_pay
from fedlake.query.cut import Fragment, PlanningError, cut_query
from fedlake.query.placement import result_bytes, result_rows, site_costs, unique_columns
from fedlake.query.plan import AgentPlanning, FederatedPlan, FragmentRun, each
from fedlake.query.rules.qualify import check_declared
from fedlake.query.statistics import Statistics, TableStatistics, fragment_distinct
from fedlake.query.semijoin import FILTER_SHARE, choose_semijoins, find_semijoins
from fedlake.residual import Workspace, semijoin_keys
from fedlake.sql_text import parse_error_message, parse_sql
from fedlake.silos.base import counted

GOVERNED = "governed"  # the site name of the governed zone, for Federation(site=...)
MAX_KEYS_BYTES_UNESTIMATED = 2 * 1024 * 1024  # what keys may cost for a probe with no estimate
QUERY_SECONDS = float(os.environ.get("FEDLAKE_QUERY_SECONDS", "600"))


class QueryDeadline(FedlakeError):
    """A query's fragments did not arrive within its deadline; what was under way was cancelled."""

__all__ = ["GOVERNED", "FederatedPlan", "Federation", "FragmentRun"]


class Federation:
    """One query over every silo, through their agents, with the results in the governed zone."""

    def __init__(
        self,
        catalog: Catalog,
        clients: dict[str, AgentClient],
        memory_limit: str = "2GB",
        semijoins: bool = True,
        site: str = "auto",
        witness: Ledger | None = None,
        max_streams: int = 32,
        deadline: float = QUERY_SECONDS,
    ):
        """`site`: where the residual runs: "auto" (the cheapest the policy allows), GOVERNED, or a
        silo's name (if the policy allows it). `witness`: the coordinator's own ledger, where the
        chain head of every agent a query used is recorded when the query ends, so that a silo's
        ledger cannot later be truncated or rewritten unnoticed. `max_streams`: fragments streaming
        at once across this coordinator's queries (the others wait their turn: backpressure).
        `deadline`: seconds a query's fragments may take to arrive; past it they are cancelled."""
        if site not in ("auto", GOVERNED, *catalog.silos):
            raise PlanningError(f"unknown site '{site}' (auto, {GOVERNED}, or a silo: {', '.join(catalog.silos)})")
        self.catalog = catalog
        self.clients = clients
        self.memory_limit = memory_limit
        self.semijoins = semijoins
        self.site = site
        self.witness = witness
        self._streams = threading.BoundedSemaphore(max_streams)
        self.deadline = deadline

    def _tables(self, sql: str, purpose: str) -> tuple[dict[str, dict[str, dict[str, str]]], Statistics]:
        """{silo: {table: {column: type}}} for the tables the query names, and their statistics as
        the coordinator's masks let them out: one call per silo."""
        try:
            tree = parse_sql(sql)[0]
        except sqlglot.errors.ParseError as exc:
            raise PlanningError(f"cannot parse the query: {parse_error_message(exc)}") from None
        if tree is None:
            raise PlanningError("the query is empty")
        named: dict[str, set[str]] = {}
        for table in tree.find_all(exp.Table):
            if table.db in self.clients:
                named.setdefault(table.db, set()).add(table.name)
        silos = sorted(named)
        found = dict(zip(silos, each(lambda silo: self.clients[silo].tables(sorted(named[silo]), purpose), silos)))
        schema: dict[str, dict[str, dict[str, str]]] = {name: {} for name in self.catalog.silos}
        statistics: dict[str, dict[str, TableStatistics]] = {}
        for silo, tables in found.items():
            schema[silo] = {name: info.columns for name, info in tables.items()}
            statistics[silo] = {name: TableStatistics(info.rows, info.distinct) for name, info in tables.items()
                                if info.rows is not None}
        check_declared(tree, schema, self.catalog)
        return schema, statistics

    def plan(self, sql: str, purpose: str, with_estimates: bool = True) -> FederatedPlan:
        """Cut the query, have each fragment planned once by its agent, place the residual and the
        semi-joins. Estimates are asked where anything depends on them (or `with_estimates`)."""
        destination = self.catalog.governed_region
        (schema, statistics), silos = self._tables(sql, purpose), set(self.catalog.silos)
        cut = cut_query(sql, schema, silos, statistics=statistics)
        estimate = with_estimates or len(cut.fragments) > 1 or self.site not in ("auto", GOVERNED)
        agents = AgentPlanning(self.clients, purpose, estimate)
        partial = [f for f in cut.fragments if f.partial]
        refused = each(lambda f: self._partial_refused(agents, f, destination), partial)
        raw = {f.name: why for f, why in zip(partial, refused) if why}
        if raw:
            cut = cut_query(sql, schema, silos, raw=set(raw), statistics=statistics)
        runs = [FragmentRun(f, notes=[raw[f.name]] if f.name in raw else list(f.notes)) for f in cut.fragments]
        plan = FederatedPlan(sql, purpose, destination, cut, runs)
        plan.distinct = fragment_distinct(cut.fragments, statistics)

        def decide(run: FragmentRun) -> None:
            planned = agents.take(run.fragment)
            if isinstance(planned, EgressDenied):
                run.denied = str(planned)
                run.decisions = [c.as_dict() for c in agents.decision(run.fragment, destination, destination).columns]
            else:
                run.planned = planned
                run.decisions = [c.as_dict() for c in planned.decision.columns]

        each(decide, runs)
        if self.site != GOVERNED and (len(runs) > 1 or self.site != "auto"):
            self._place(plan, agents)
        if self.semijoins and len(runs) > 1:
            self._place_semijoins(plan, agents)
        return plan

    @staticmethod
    def _partial_refused(agents: AgentPlanning, fragment: Fragment, destination: str) -> str:
        """Why a fragment must send its rows rather than partial aggregates, if it must: a partial
        aggregate the gate would hold back for small groups would make the combined result wrong."""
        planned = agents.planned(fragment)
        if isinstance(planned, EgressDenied):
            return f"partial aggregation ({fragment.partial}) not used: {planned}"
        if planned.decision.dp:
            return (f"partial aggregation ({fragment.partial}) not used: the policy releases these aggregates only "
                    "with differential privacy, and combining noisy partials would be wrong")
        return ""

    def _place(self, plan: FederatedPlan, agents: AgentPlanning) -> None:
        """Choose the residual's site: the fewest estimated bytes among the sites the policy allows."""
        runs = plan.runs
        if any(r.estimated_bytes is None or r.schema is None for r in runs):
            return  # a fragment the gate refuses: the run fails with its refusal, naming the column and rule
        shapes = {r.fragment.name: (r.estimated_rows or 0, unique_columns(r.fragment.sql)) for r in runs}
        plan.result_estimated_rows = result_rows(plan.cut.residual, shapes, distinct=plan.distinct)
        plan.result_estimated_bytes = result_bytes(
            plan.cut.residual, {r.fragment.name: r.schema for r in runs}, plan.result_estimated_rows, arrow_width
        )
        plan.sites = site_costs([(r.fragment.silo, r.estimated_bytes or 0) for r in runs], plan.result_estimated_bytes)
        if self.site == "auto":
            candidates = sorted(plan.sites, key=lambda s: s.estimated_bytes)
        else:
            candidates = [s for s in plan.sites if s.silo == self.site]
            if not candidates:
                raise PlanningError(f"site {self.site} is not one of the silos the query reads")
        for site in candidates:
            if site.silo is not None:
                site.blocked = self._blocked(site.silo, runs, agents, plan.destination)
                if site.blocked and self.site != "auto":
                    raise PlanningError(f"the residual may not run in silo {site.silo}: {site.blocked}")
            if not site.blocked:
                plan.site = site.silo
                break
        for run in runs:
            run.at_site = run.fragment.silo == plan.site

    def _blocked(self, silo: str, runs: list[FragmentRun], agents: AgentPlanning, destination: str) -> str:
        """Why the residual may not run in `silo`, if it may not: another silo may not send its
        fragment there as it sends it to the governed zone (so the result could hold what the
        governed zone may not receive)."""
        region = self.catalog.silo(silo).region
        if region == destination:
            return ""
        reasons = []
        for run in runs:
            if run.fragment.silo == silo:
                continue
            there, here = agents.decision(run.fragment, region, destination), agents.decision(run.fragment, destination, destination)
            if there.denied:
                reasons.append(f"{run.fragment.silo} may not send {run.fragment.name} to {region}: {there.denied}")
                continue
            differ = [column for column, action in there.masks.items() if here.masks.get(column) != action]
            if differ or there.dp or here.dp:
                reasons.append(f"{run.fragment.silo} may not send {', '.join(differ) or 'its aggregate-only columns'} to "
                               f"{region} as it sends them to the governed zone ({destination})")
        return "; ".join(reasons)

    def _place_semijoins(self, plan: FederatedPlan, agents: AgentPlanning) -> None:
        """Attach each semi-join the query allows to its probe fragment, if policy lets the keys go
        where it runs: the keys were released for the governed zone's region, and may travel to the
        probe silo's region only if the policy treats them the same way for that region. A probe
        in the residual's own silo needs none: its rows do not cross."""
        runs, cut, destination = plan.runs, plan.cut, plan.destination
        by_name = {r.fragment.name: r for r in runs}
        outputs = {name: sqlglot.parse_one(r.fragment.sql, read="duckdb").named_selects for name, r in by_name.items()}
        candidates = find_semijoins(cut.residual, outputs)
        estimates = {r.fragment.name: (r.estimated_rows, r.estimated_bytes) for r in runs if r.estimated_bytes is not None}
        for semijoin in choose_semijoins(candidates, estimates):
            run = by_name[semijoin.probe.fragment]
            if run.at_site:
                note = "no semi-join needed: the residual runs in this silo, so its rows do not cross"
                run.notes += [note] if note not in run.notes else []
                continue
            region = self.catalog.silo(run.fragment.silo).region
            blocked = []
            for key in semijoin.build if region != destination else ():
                source = by_name[key.fragment].fragment
                there = agents.decision(source, region, destination).actions().get(key.name)
                here = agents.decision(source, destination, destination).actions().get(key.name)
                if there is None or there == "deny" or there != here:
                    blocked.append(f"{source.silo} may not send {key.name} to {region} as it sends it to {destination}")
            # which keys a query over other fragments keeps (a HAVING, say) tells of every column it reads
            for name in semijoin.reads if region != destination else ():
                source = by_name[name].fragment
                there, here = agents.decision(source, region, destination), agents.decision(source, destination, destination)
                if there.denied or there.actions() != here.actions() or there.dp:
                    blocked.append(f"{source.silo} may not send {name}'s columns to {region} as it sends them to {destination}")
            if blocked:
                run.notes.append("semi-join on " + semijoin.condition + " not used: " + "; ".join(blocked))
            else:
                run.semijoins.append(semijoin)

    def run(self, sql: str, purpose: str) -> tuple[pa.Table, FederatedPlan]:
        plan = self.plan(sql, purpose, with_estimates=False)
        reader = self.stream(plan)
        table = reader.read_all()
        plan.result_rows, plan.result_bytes = table.num_rows, table.nbytes
        self.witness_heads(plan)
        return table, plan

    def witness_heads(self, plan: FederatedPlan, by: str = "coordinator") -> dict[str, tuple[int, str]]:
        """Record, in the coordinator's ledger (chain `by`), the chain head of every silo the query used."""
        if self.witness is None:
            return {}
        silos = sorted({r.fragment.silo for r in plan.runs} | ({plan.site} if plan.site else set()))
        heads = {}
        for head in each(lambda silo: self.clients[silo].action("ledger_head"), silos):
            heads[head["chain"]] = (int(head["seq"]), str(head["hash"]))
        self.witness.witness(by, heads)
        return heads

    def stream(self, plan: FederatedPlan) -> pa.RecordBatchReader:
        """Run the fragments, then stream the residual's result, from wherever the plan placed it."""
        refused = next((r for r in plan.runs if r.planned is None), None)
        if refused is not None:
            raise EgressDenied(None, refused.denied or f"fragment {refused.fragment.name} was not planned")
        if plan.site:
            return self._stream_from_silo(plan)
        if len(plan.runs) == 1 and _passes_through(plan.cut.residual, plan.runs[0].fragment.name):
            return self._stream_alone(plan)
        started = time.perf_counter()
        workspace = Workspace(self.memory_limit)
        lock = threading.Lock()
        loaded: dict[str, Future] = {}

        def fetch(run: FragmentRun) -> None:
            # a probe runs once its keys are in; it never holds a stream slot while it waits for them
            keys = self._keys(run, workspace, loaded)
            client = self.clients[run.fragment.silo]
            with self._streams:
                for column, keyset, condition in keys:
                    client.attach_keys(run.planned.ticket, column, keyset, condition)
                t0 = time.perf_counter()
                reader = client.fetch(run.planned.ticket)

                def arrived(rows: int, nbytes: int) -> None:
                    with lock:
                        run.rows, run.bytes, run.seconds = rows, nbytes, time.perf_counter() - t0

                workspace.load(run.fragment.name, reader, arrived)

        expired = threading.Event()

        def cancel() -> None:
            workspace.interrupt()
            for run in plan.runs:
                if run.rows is None:
                    self.clients[run.fragment.silo].cancel(run.planned.ticket)

        def expire() -> None:
            expired.set()
            cancel()

        timer = threading.Timer(self.deadline, expire)
        timer.daemon = True
        timer.start()
        try:
            with ThreadPoolExecutor(max_workers=len(plan.runs)) as pool:
                for run in sorted(plan.runs, key=lambda r: bool(r.semijoins)):  # the fragments giving keys first
                    loaded[run.fragment.name] = pool.submit(fetch, run)
                _first_failure(list(loaded.values()), cancel)
        except BaseException:
            workspace.close()
            if expired.is_set():
                waiting = [r.fragment.silo for r in plan.runs if r.rows is None]
                raise QueryDeadline(f"the query ran past its deadline of {self.deadline:g} s (FEDLAKE_QUERY_SECONDS) waiting "
                                    f"for {', '.join(sorted(set(waiting))) or 'its fragments'}; cancelled") from None
            raise
        finally:
            timer.cancel()

        def finished(rows: int, nbytes: int) -> None:
            plan.result_rows, plan.result_bytes = rows, nbytes
            plan.seconds = time.perf_counter() - started

        return workspace.run(plan.cut.residual, finished)

    def _stream_alone(self, plan: FederatedPlan) -> pa.RecordBatchReader:
        """A query one silo answers whole: its fragment's stream is the result, with no residual."""
        run, started = plan.runs[0], time.perf_counter()
        with self._streams:
            reader = self.clients[run.fragment.silo].fetch(run.planned.ticket)

        def finished(rows: int, nbytes: int) -> None:
            run.rows, run.bytes, run.seconds = rows, nbytes, time.perf_counter() - started
            plan.result_rows, plan.result_bytes, plan.seconds = rows, nbytes, run.seconds

        return pa.RecordBatchReader.from_batches(reader.schema, counted(reader, finished))

    @staticmethod
    def _filter_limit(run: FragmentRun) -> float:
        return FILTER_SHARE * run.estimated_bytes if run.estimated_bytes else MAX_KEYS_BYTES_UNESTIMATED

    def _keys(self, run: FragmentRun, workspace: Workspace, loaded: dict[str, Future]) -> list[tuple[str, KeySet, str]]:
        """The key sets that reduce a probe fragment, once the fragments they come from are in; a
        key set that would not pay, or whose keys cannot match the probe's column, is not sent."""
        keys = []
        for semijoin in run.semijoins:
            for source in semijoin.sources:
                loaded[source].result()
            values = semijoin_keys(workspace, [(k.fragment, k.name) for k in semijoin.build], semijoin.keys_sql, set(loaded))
            family = key_family(run.schema.field(semijoin.probe.name).type) if run.schema else None
            if family != key_family(values.type):
                run.notes.append(f"semi-join on {semijoin.condition} not used: its keys are {values.type}, the column "
                                 f"{semijoin.probe.name} is {run.schema.field(semijoin.probe.name).type if run.schema else '?'}")
                continue
            keyset, why = keys_if_they_pay(values, self._filter_limit(run), semijoin.condition)
            if why:
                run.notes.append(why)
            if keyset is not None:
                keys.append((semijoin.probe.name, keyset, semijoin.condition))
                run.filters[semijoin.condition] = (keyset.keys, keyset.nbytes)
        return keys

    def _stream_from_silo(self, plan: FederatedPlan) -> pa.RecordBatchReader:
        """The residual placed in a silo: the other silos' agents prepare their fragments for that
        silo's agent, which fetches them itself (attaching their semi-join keys first), runs the
        residual and streams its result here."""
        started = time.perf_counter()
        site = plan.site
        remote = [r for r in plan.runs if not r.at_site]
        tickets = each(lambda r: self.clients[r.fragment.silo].prepare_transfer(r.fragment.sql, plan.purpose, site), remote)
        request = RunResidual(
            uuid.uuid4().hex, plan.purpose, plan.cut.residual,
            local=tuple(LocalFragment(r.fragment.name, r.fragment.sql) for r in plan.runs if r.at_site),
            imports=tuple(Import(r.fragment.name, r.fragment.silo, self.clients[r.fragment.silo].location, ticket)
                          for r, ticket in zip(remote, tickets)),
            semijoins=tuple(ResidualSemiJoin(s.condition, r.fragment.name, s.probe.name,
                                             tuple((k.fragment, k.name) for k in s.build), self._filter_limit(r),
                                             s.keys_sql, tuple(s.reads))
                            for r in remote for s in r.semijoins),
        )
        client = self.clients[site]
        reader = client.residual(request)

        def finished(rows: int, nbytes: int) -> None:
            plan.result_rows, plan.result_bytes = rows, nbytes
            plan.seconds = time.perf_counter() - started
            try:
                report = client.residual_report(request.id)
            except FedlakeError as exc:  # the result is complete; only the counts of what fed it are lost
                for run in plan.runs:
                    run.notes.append(f"actual rows and bytes unknown: {exc}")
                return
            for run in plan.runs:
                got = report.fragments.get(run.fragment.name)
                if got is not None:
                    run.rows, run.bytes, run.seconds = got.rows, got.bytes, got.seconds
                run.filters.update(report.filters.get(run.fragment.name, {}))
                run.notes += report.notes.get(run.fragment.name, [])

        return pa.RecordBatchReader.from_batches(reader.schema, counted(reader, finished))


def _passes_through(residual: str, fragment: str) -> bool:
    """Whether the residual only passes its one fragment's rows on (`SELECT * FROM fragment`)."""
    tree = sqlglot.parse_one(residual, read="duckdb")
    if not isinstance(tree, exp.Select) or len(tree.expressions) != 1 or not isinstance(tree.expressions[0], exp.Star):
        return False
    source = tree.args.get("from") or tree.args.get("from_")
    table = source.this if source is not None else None
    clauses = ("where", "group", "having", "order", "limit", "offset", "distinct", "joins", "with", "qualify", "windows")
    return isinstance(table, exp.Table) and table.name == fragment and not table.db and not any(tree.args.get(c) for c in clauses)


def _first_failure(futures: list[Future], cancel: Callable[[], None]) -> None:
    """Wait for every fragment; at the first failure, cancel the others (at their agents too) and raise it."""
    for future in futures:
        try:
            future.result()
        except BaseException:
            cancel()
            raise

