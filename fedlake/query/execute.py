"""Running a federated query: fragments concurrently in their silos through their agents, the
residual in DuckDB at the governed zone, over the fragments' streamed results.

Each fragment's batches are loaded into the governed zone's DuckDB as they arrive (DuckDB spills to
disk beyond its memory limit), so memory is bounded by the query, not by the silos.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp

from fedlake.agent.client import AgentClient
from fedlake.bloom import MAX_FILTER_BYTES, BloomFilter, key_family
from fedlake.catalog import Catalog
from fedlake.errors import FedlakeError
from fedlake.query.cut import Cut, Fragment, PlanningError, cut_query
from fedlake.query.semijoin import FILTER_SHARE, SemiJoin, choose_semijoins, find_semijoins
from fedlake.silos.base import counted


@dataclass
class FragmentRun:
    fragment: Fragment
    estimated_rows: int | None = None
    estimated_bytes: int | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    sql_in_silo: str = ""
    semijoins: list[SemiJoin] = field(default_factory=list)  # keys it waits for, to send only rows that can join
    notes: list[str] = field(default_factory=list)  # what the planner chose not to do here, and why
    filters: dict[str, tuple[int, int]] = field(default_factory=dict)  # condition -> (keys, bytes) sent

    @property
    def filter_bytes(self) -> int:
        """The Bloom filters sent into the silo: they cross a border too."""
        return sum(nbytes for _, nbytes in self.filters.values())
    rows: int | None = None
    bytes: int | None = None
    seconds: float | None = None


@dataclass
class FederatedPlan:
    query: str
    purpose: str
    destination: str
    cut: Cut
    runs: list[FragmentRun]
    result_rows: int | None = None
    result_bytes: int | None = None
    seconds: float | None = None

    @property
    def bytes_crossing(self) -> int | None:
        """Every byte that crossed a silo border: the fragments' results and the semi-join filters."""
        if any(r.bytes is None for r in self.runs):
            return None
        return sum(r.bytes + r.filter_bytes for r in self.runs)

    def bytes_by_silo(self) -> dict[str, int]:
        moved: dict[str, int] = {}
        for r in self.runs:
            moved[r.fragment.silo] = moved.get(r.fragment.silo, 0) + (r.bytes or 0)
        return moved


class Federation:
    """One query over every silo, through their agents, with the results in the governed zone."""

    def __init__(
        self, catalog: Catalog, clients: dict[str, AgentClient], memory_limit: str = "2GB", semijoins: bool = True
    ):
        self.catalog = catalog
        self.clients = clients
        self.memory_limit = memory_limit
        self.semijoins = semijoins

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
        if with_estimates:
            def decide(run: FragmentRun) -> None:
                explained = explain(run.fragment, destination)
                run.decisions = explained["columns"]
                if not explained["denied"]:
                    run.sql_in_silo = explained["sql"]
                    self._estimate(run, purpose, destination)

            _each(decide, runs)
        if self.semijoins and len(runs) > 1:
            self._place_semijoins(runs, cut, purpose, destination, explain)
        return FederatedPlan(sql, purpose, destination, cut, runs)

    @staticmethod
    def _partial_refused(explained: dict[str, Any], fragment: Fragment) -> str:
        """Why a fragment must send its rows rather than partial aggregates, if it must: a partial
        aggregate the gate would hold back for small groups would make the combined result wrong."""
        if explained["denied"]:
            return f"partial aggregation ({fragment.partial}) not used: {explained['denied']}"
        if explained.get("k"):
            return (f"partial aggregation ({fragment.partial}) not used: the policy would hold back groups of fewer "
                    f"than {explained['k']} subjects, and the combined aggregates would be wrong")
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
        return run.estimated_rows, run.estimated_bytes

    def _place_semijoins(
        self, runs: list[FragmentRun], cut: Cut, purpose: str, destination: str, explain: _Explanations
    ) -> None:
        """Attach each semi-join the query allows to its probe fragment, if policy lets the keys go
        where it runs: the keys were released for the governed zone's region, and may travel to the
        probe silo's region only if the policy treats them the same way for that region."""
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
        return table, plan

    def stream(self, plan: FederatedPlan) -> pa.RecordBatchReader:
        """Run the fragments, then stream the residual's result; the DuckDB behind it lives as long as the stream."""
        started = time.perf_counter()
        spill = tempfile.TemporaryDirectory(prefix="fedlake-governed-")
        db = duckdb.connect(config={"memory_limit": self.memory_limit, "temp_directory": spill.name,
                                    "autoinstall_known_extensions": False, "preserve_insertion_order": True})
        lock = threading.Lock()
        loaded: dict[str, Future] = {}
        keys = {(r.fragment.name, s.condition): uuid.uuid4().hex for r in plan.runs for s in r.semijoins}

        def fetch(run: FragmentRun) -> None:
            # a probe starts at once; its keys follow as soon as the fragments they come from are in
            keep = [{"column": s.probe.name, "keys": keys[(run.fragment.name, s.condition)]} for s in run.semijoins] or None
            t0 = time.perf_counter()
            reader = self.clients[run.fragment.silo].query(run.fragment.sql, plan.purpose, plan.destination, keep)

            def arrived(rows: int, nbytes: int) -> None:
                with lock:
                    run.rows, run.bytes, run.seconds = rows, nbytes, time.perf_counter() - t0

            cursor = db.cursor()
            try:
                cursor.register("incoming", pa.RecordBatchReader.from_batches(reader.schema, counted(reader, arrived)))
                cursor.execute(f'CREATE TABLE "{run.fragment.name}" AS SELECT * FROM incoming')
            finally:
                cursor.close()

        try:
            # every fragment and every sending of keys has its own thread, so none waits for a thread
            with ThreadPoolExecutor(max_workers=max(1, len(plan.runs) + len(keys))) as pool:
                for run in plan.runs:
                    loaded[run.fragment.name] = pool.submit(fetch, run)
                sent = [
                    pool.submit(self._send_keys, r, s, keys[(r.fragment.name, s.condition)], db, loaded)
                    for r in plan.runs for s in r.semijoins
                ]
                for future in [*loaded.values(), *sent]:
                    future.result()
            result = db.execute(plan.cut.residual).fetch_record_batch(65_536)
        except BaseException:
            db.close()
            spill.cleanup()
            raise

        def finished(rows: int, nbytes: int) -> None:
            plan.result_rows, plan.result_bytes = rows, nbytes
            plan.seconds = time.perf_counter() - started
            db.close()
            spill.cleanup()

        return pa.RecordBatchReader.from_batches(result.schema, counted(result, finished))

    def _send_keys(
        self, run: FragmentRun, semijoin: SemiJoin, keys_id: str, db: duckdb.DuckDBPyConnection, loaded: dict[str, Future]
    ) -> None:
        """Send the probe fragment's agent a Bloom filter of the keys its rows must match (or None,
        to send all, when the filter would not pay), once the fragments the keys come from are in."""
        bloom = None
        try:
            for key in semijoin.build:
                loaded[key.fragment].result()
            cursor = db.cursor()
            try:
                union = " UNION ".join(f'SELECT DISTINCT "{k.name}" AS k FROM "{k.fragment}"' for k in semijoin.build)
                keys = cursor.execute(union).to_arrow_table().column("k")
            finally:
                cursor.close()
            family = key_family(keys.type)
            if family is None:
                run.notes.append(f"semi-join on {semijoin.condition} not used: keys of type {keys.type}")
            else:
                bloom = BloomFilter.of(keys, family)
                limit = min(MAX_FILTER_BYTES, FILTER_SHARE * run.estimated_bytes if run.estimated_bytes else MAX_FILTER_BYTES)
                if bloom.nbytes > limit:
                    run.notes.append(f"semi-join on {semijoin.condition} not used: {bloom.keys:,} keys make a "
                                     f"{bloom.nbytes:,}-byte filter, more than it could save")
                    bloom = None
        finally:
            # the probe waits for this message whatever happened to its keys
            self.clients[run.fragment.silo].action("semijoin_keys", id=keys_id, filter=bloom.to_dict() if bloom else None)
        if bloom is not None:
            run.filters[semijoin.condition] = (bloom.keys, bloom.nbytes)


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
