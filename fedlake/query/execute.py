"""Running a federated query: fragments concurrently in their silos through their agents, the
residual in DuckDB over the fragments' streamed results, at the site that moves the fewest bytes
the policy allows: the governed zone, or a silo's agent (see placement).

Each fragment's batches are loaded into the residual's DuckDB as they arrive (it spills to disk
beyond its memory limit), so memory is bounded by the query, not by the silos.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot import exp

from fedlake.arrow_types import arrow_width, sql_type
from fedlake.agent.client import AgentClient
from fedlake.audit import Ledger
from fedlake.bloom import MAX_FILTER_BYTES, filter_if_it_pays
from fedlake.catalog import Catalog
from fedlake.errors import FedlakeError
from fedlake.query.cut import Cut, Fragment, PlanningError, cut_query
from fedlake.query.placement import Site, result_bytes, result_rows, site_costs, unique_columns
from fedlake.query.semijoin import FILTER_SHARE, SemiJoin, choose_semijoins, find_semijoins
from fedlake.residual import Workspace
from fedlake.silos.base import counted

GOVERNED = "governed"  # the site name of the governed zone, for Federation(site=...)


@dataclass
class FragmentRun:
    fragment: Fragment
    estimated_rows: int | None = None
    estimated_bytes: int | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    denied: str = ""  # the agent's refusal of the fragment, naming the column and the rule
    sql_in_silo: str = ""
    semijoins: list[SemiJoin] = field(default_factory=list)  # keys it waits for, to send only rows that can join
    notes: list[str] = field(default_factory=list)  # what the planner chose not to do here, and why
    filters: dict[str, tuple[int, int]] = field(default_factory=dict)  # condition -> (keys, bytes) sent
    schema: pa.Schema | None = None  # what the gate will send, as the agent planned it
    at_site: bool = False  # the residual runs in this fragment's silo: its rows stay there
    rows: int | None = None
    bytes: int | None = None
    seconds: float | None = None

    @property
    def filter_bytes(self) -> int:
        """The Bloom filters sent into the silo: they cross a border too."""
        return sum(nbytes for _, nbytes in self.filters.values())


@dataclass
class FederatedPlan:
    query: str
    purpose: str
    destination: str
    cut: Cut
    runs: list[FragmentRun]
    site: str | None = None  # the silo whose agent runs the residual; None: the governed zone
    sites: list[Site] = field(default_factory=list)  # the sites considered, with their estimated bytes
    result_estimated_rows: int | None = None
    result_estimated_bytes: int | None = None
    result_rows: int | None = None
    result_bytes: int | None = None
    seconds: float | None = None

    @property
    def bytes_crossing(self) -> int | None:
        """Every byte that crossed a silo border: the fragments that left their silo, the semi-join
        filters, and the result where the residual ran in a silo."""
        crossing = [r for r in self.runs if not r.at_site]
        if any(r.bytes is None for r in crossing) or (self.site and self.result_bytes is None):
            return None
        return sum(r.bytes + r.filter_bytes for r in crossing) + (self.result_bytes if self.site else 0)

    def bytes_by_silo(self) -> dict[str, int]:
        """Bytes that left each silo."""
        moved: dict[str, int] = {}
        for r in self.runs:
            if not r.at_site:
                moved[r.fragment.silo] = moved.get(r.fragment.silo, 0) + (r.bytes or 0)
        if self.site:
            moved[self.site] = moved.get(self.site, 0) + (self.result_bytes or 0)
        return moved


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
    ):
        """`site`: where the residual runs: "auto" (the cheapest the policy allows), GOVERNED, or a
        silo's name (if the policy allows it). `witness`: the coordinator's own ledger, where the
        chain head of every agent a query used is recorded when the query ends, so that a silo's
        ledger cannot later be truncated or rewritten unnoticed."""
        if site not in ("auto", GOVERNED, *catalog.silos):
            raise PlanningError(f"unknown site '{site}' (auto, {GOVERNED}, or a silo: {', '.join(catalog.silos)})")
        self.catalog = catalog
        self.clients = clients
        self.memory_limit = memory_limit
        self.semijoins = semijoins
        self.site = site
        self.witness = witness

    def _schema(self, sql: str) -> dict[str, dict[str, dict[str, str]]]:
        """{silo: {table: {column: type}}} for the tables the query names, asked of their agents."""
        try:
            tree = sqlglot.parse_one(sql, read="duckdb")
        except sqlglot.errors.ParseError as exc:
            raise PlanningError(f"cannot parse the query: {exc}") from None
        schema: dict[str, dict[str, dict[str, str]]] = {name: {} for name in self.catalog.silos}
        present: dict[str, set[str]] = {}
        for table in tree.find_all(exp.Table):
            if table.db in self.clients and table.name not in schema[table.db]:
                if table.db not in present:
                    present[table.db] = set(self.clients[table.db].list_tables())
                if table.name in present[table.db]:
                    schema[table.db][table.name] = self.clients[table.db].sql_schema(table.name)
        return schema

    def plan(self, sql: str, purpose: str, with_estimates: bool = True) -> FederatedPlan:
        destination = self.catalog.governed_region
        schema, silos = self._schema(sql), set(self.catalog.silos)
        cut = cut_query(sql, schema, silos)
        explain = _Explanations(self.clients, purpose)
        partial = [f for f in cut.fragments if f.partial]
        refused = _each(lambda f: self._partial_refused(explain(f, destination), f), partial)
        raw = {f.name: why for f, why in zip(partial, refused) if why}
        if raw:
            cut = cut_query(sql, schema, silos, raw=set(raw))
        runs = [FragmentRun(f, notes=[raw[f.name]] if f.name in raw else []) for f in cut.fragments]
        plan = FederatedPlan(sql, purpose, destination, cut, runs)
        placing = self.site != GOVERNED and (len(runs) > 1 or self.site != "auto")
        if with_estimates or placing:
            def decide(run: FragmentRun) -> None:
                explained = explain(run.fragment, destination)
                run.decisions = explained["columns"]
                run.denied = explained["denied"] or ""
                if not explained["denied"]:
                    run.sql_in_silo = explained["sql"]
                    self._estimate(run, purpose, destination)

            _each(decide, runs)
        if placing:
            self._place(plan, explain)
        if self.semijoins and len(runs) > 1:
            self._place_semijoins(plan, purpose, explain)
        return plan

    def _place(self, plan: FederatedPlan, explain: _Explanations) -> None:
        """Choose the residual's site: the fewest estimated bytes among the sites the policy allows."""
        runs = plan.runs
        if any(r.estimated_bytes is None or r.schema is None for r in runs):
            return  # a fragment the gate refuses: the run fails with its refusal, naming the column and rule
        shapes = {r.fragment.name: (r.estimated_rows or 0, unique_columns(r.fragment.sql)) for r in runs}
        plan.result_estimated_rows = result_rows(plan.cut.residual, shapes)
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
                site.blocked = self._blocked(site.silo, runs, explain, plan.destination)
                if site.blocked and self.site != "auto":
                    raise PlanningError(f"the residual may not run in silo {site.silo}: {site.blocked}")
            if not site.blocked:
                plan.site = site.silo
                break
        for run in runs:
            run.at_site = run.fragment.silo == plan.site

    def _blocked(self, silo: str, runs: list[FragmentRun], explain: _Explanations, destination: str) -> str:
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
            there, here = explain(run.fragment, region), explain(run.fragment, destination)
            if there["denied"]:
                reasons.append(f"{run.fragment.silo} may not send {run.fragment.name} to {region}: {there['denied']}")
                continue
            masks = here.get("masks", {})
            differ = [column for column, action in there.get("masks", {}).items() if masks.get(column) != action]
            if differ or there.get("dp") or here.get("dp"):
                reasons.append(f"{run.fragment.silo} may not send {', '.join(differ) or 'its aggregate-only columns'} to "
                               f"{region} as it sends them to the governed zone ({destination})")
        return "; ".join(reasons)

    @staticmethod
    def _partial_refused(explained: dict[str, Any], fragment: Fragment) -> str:
        """Why a fragment must send its rows rather than partial aggregates, if it must: a partial
        aggregate the gate would hold back for small groups would make the combined result wrong."""
        if explained["denied"]:
            return f"partial aggregation ({fragment.partial}) not used: {explained['denied']}"
        if explained.get("dp"):
            return (f"partial aggregation ({fragment.partial}) not used: the policy releases these aggregates only "
                    "with differential privacy, and combining noisy partials would be wrong")
        return ""

    def _estimate(self, run: FragmentRun, purpose: str, destination: str) -> tuple[int, int] | None:
        """The agent's estimate of the rows and bytes a fragment sends (from its silo engine's
        planner); None if the gate refuses it."""
        if run.estimated_rows is None:
            try:
                estimate = self.clients[run.fragment.silo].estimate(run.fragment.sql, purpose, destination)
            except FedlakeError:
                return None
            run.estimated_rows, run.estimated_bytes = estimate["rows"], estimate["bytes"]
            run.schema = estimate["schema"]
        return run.estimated_rows, run.estimated_bytes

    def _place_semijoins(self, plan: FederatedPlan, purpose: str, explain: _Explanations) -> None:
        """Attach each semi-join the query allows to its probe fragment, if policy lets the keys go
        where it runs: the keys were released for the governed zone's region, and may travel to the
        probe silo's region only if the policy treats them the same way for that region. A probe
        in the residual's own silo needs none: its rows do not cross."""
        runs, cut, destination = plan.runs, plan.cut, plan.destination
        by_name = {r.fragment.name: r for r in runs}

        def actions(fragment: Fragment, region: str) -> dict[str, str]:
            explained = explain(fragment, region)
            return {} if explained["denied"] else {c["output"]: c["action"] for c in explained["columns"]}

        outputs = {name: sqlglot.parse_one(r.fragment.sql, read="duckdb").named_selects for name, r in by_name.items()}
        candidates = find_semijoins(cut.residual, outputs)
        involved = {c.probe.fragment for c in candidates} | {k.fragment for c in candidates for k in c.build}
        estimates = dict(zip(involved, _each(lambda name: self._estimate(by_name[name], purpose, destination), list(involved))))
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
                there, here = actions(source, region).get(key.name), actions(source, destination).get(key.name)
                if there is None or there == "deny" or there != here:
                    blocked.append(f"{source.silo} may not send {key.name} to {region} as it sends it to {destination}")
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
        for silo in silos:
            head = self.clients[silo].action("ledger_head")
            heads[head["chain"]] = (int(head["seq"]), str(head["hash"]))
        self.witness.witness(by, heads)
        return heads

    def stream(self, plan: FederatedPlan) -> pa.RecordBatchReader:
        """Run the fragments, then stream the residual's result, from wherever the plan placed it."""
        if plan.site:
            return self._stream_from_silo(plan)
        started = time.perf_counter()
        workspace = Workspace(self.memory_limit)
        lock = threading.Lock()
        loaded: dict[str, Future] = {}
        keys = self._keys_ids(plan)

        def fetch(run: FragmentRun) -> None:
            # a probe starts at once; its keys follow as soon as the fragments they come from are in
            keep = self._keep(run, keys)
            t0 = time.perf_counter()
            reader = self.clients[run.fragment.silo].query(run.fragment.sql, plan.purpose, plan.destination, keep)

            def arrived(rows: int, nbytes: int) -> None:
                with lock:
                    run.rows, run.bytes, run.seconds = rows, nbytes, time.perf_counter() - t0

            workspace.load(run.fragment.name, reader, arrived)

        try:
            # every fragment and every sending of keys has its own thread, so none waits for a thread
            with ThreadPoolExecutor(max_workers=max(1, len(plan.runs) + len(keys))) as pool:
                for run in plan.runs:
                    loaded[run.fragment.name] = pool.submit(fetch, run)
                sent = [
                    pool.submit(self._send_keys, r, s, keys[(r.fragment.name, s.condition)], workspace, loaded)
                    for r in plan.runs for s in r.semijoins
                ]
                for future in [*loaded.values(), *sent]:
                    future.result()
        except BaseException:
            workspace.close()
            raise

        def finished(rows: int, nbytes: int) -> None:
            plan.result_rows, plan.result_bytes = rows, nbytes
            plan.seconds = time.perf_counter() - started

        return workspace.run(plan.cut.residual, finished)

    @staticmethod
    def _keys_ids(plan: FederatedPlan) -> dict[tuple[str, str], str]:
        return {(r.fragment.name, s.condition): uuid.uuid4().hex for r in plan.runs for s in r.semijoins}

    @staticmethod
    def _keep(run: FragmentRun, keys: dict[tuple[str, str], str]) -> list[dict[str, str]] | None:
        return [{"column": s.probe.name, "keys": keys[(run.fragment.name, s.condition)]} for s in run.semijoins] or None

    @staticmethod
    def _filter_limit(run: FragmentRun) -> float:
        return FILTER_SHARE * run.estimated_bytes if run.estimated_bytes else MAX_FILTER_BYTES

    def _send_keys(
        self, run: FragmentRun, semijoin: SemiJoin, keys_id: str, workspace: Workspace, loaded: dict[str, Future]
    ) -> None:
        """Send the probe fragment's agent a Bloom filter of the keys its rows must match (or None,
        to send all, when the filter would not pay), once the fragments the keys come from are in."""
        bloom = None
        try:
            for key in semijoin.build:
                loaded[key.fragment].result()
            keys = workspace.distinct([(k.fragment, k.name) for k in semijoin.build])
            bloom, why = filter_if_it_pays(keys, self._filter_limit(run), semijoin.condition)
            if why:
                run.notes.append(why)
        finally:
            # the probe waits for this message whatever happened to its keys
            self.clients[run.fragment.silo].action("semijoin_keys", id=keys_id, filter=bloom.to_dict() if bloom else None)
        if bloom is not None:
            run.filters[semijoin.condition] = (bloom.keys, bloom.nbytes)

    def _stream_from_silo(self, plan: FederatedPlan) -> pa.RecordBatchReader:
        """The residual placed in a silo: the other silos' agents prepare their fragments for that
        silo's agent, which fetches them itself, sends their semi-join filters, runs the residual and
        streams its result here."""
        started = time.perf_counter()
        site, region = plan.site, self.catalog.silo(plan.site).region
        keys = self._keys_ids(plan)
        remote = [r for r in plan.runs if not r.at_site]
        tickets = _each(lambda r: self.clients[r.fragment.silo].prepare_transfer(
            r.fragment.sql, plan.purpose, region, plan.destination, site, self._keep(r, keys)), remote)
        rid = uuid.uuid4().hex
        request = {
            "id": rid, "purpose": plan.purpose, "destination": plan.destination, "sql": plan.cut.residual,
            "local": [{"name": r.fragment.name, "sql": r.fragment.sql} for r in plan.runs if r.at_site],
            "imports": [{"name": r.fragment.name, "silo": r.fragment.silo, "location": self.clients[r.fragment.silo].location,
                         "ticket": ticket, "schema": {f.name: sql_type(f.type) for f in r.schema or []}}
                        for r, ticket in zip(remote, tickets)],
            "semijoins": [{"condition": s.condition, "probe": r.fragment.name, "keys": keys[(r.fragment.name, s.condition)],
                           "build": [[k.fragment, k.name] for k in s.build], "limit": self._filter_limit(r)}
                          for r in remote for s in r.semijoins],
        }
        client = self.clients[site]
        reader = client.residual(request)

        def finished(rows: int, nbytes: int) -> None:
            plan.result_rows, plan.result_bytes = rows, nbytes
            plan.seconds = time.perf_counter() - started
            try:
                report = client.action("residual_report", id=rid)
            except FedlakeError as exc:  # the result is complete; only the counts of what fed it are lost
                for run in plan.runs:
                    run.notes.append(f"actual rows and bytes unknown: {exc}")
                return
            for run in plan.runs:
                got = report["fragments"].get(run.fragment.name, {})
                run.rows, run.bytes, run.seconds = got.get("rows"), got.get("bytes"), got.get("seconds")
                run.filters.update({c: (k, b) for c, (k, b) in report["filters"].get(run.fragment.name, {}).items()})
                run.notes += report["notes"].get(run.fragment.name, [])

        return pa.RecordBatchReader.from_batches(reader.schema, counted(reader, finished))


class _Explanations:
    """The gate's decisions for fragments, asked of their agents once per fragment and region while
    one query is planned (the planner consults them for partial aggregates, EXPLAIN and semi-joins)."""

    def __init__(self, clients: dict[str, AgentClient], purpose: str):
        self._clients = clients
        self._purpose = purpose
        self._known: dict[tuple[str, str, str], dict[str, Any]] = {}

    def __call__(self, fragment: Fragment, region: str) -> dict[str, Any]:
        key = (fragment.silo, fragment.sql, region)
        if key not in self._known:
            self._known[key] = self._clients[fragment.silo].explain(fragment.sql, self._purpose, region)
        return self._known[key]


def _each(call: Callable[[Any], Any], items: list) -> list:
    """`call` on every item, concurrently: the agents answer planning calls independently."""
    if len(items) <= 1:
        return [call(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        return list(pool.map(call, items))
