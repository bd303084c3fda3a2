"""A residual the planner placed in a silo, run by that silo's agent: the cheapest site the policy
allows, where the other silos' fragments come straight from their agents.

Only a coordinator may place a residual. The other silos' fragments come under capabilities whose
senders checked that their masks for this silo's region are those for the coordinator's own; this
silo's own fragments are planned exactly as if they were leaving for the coordinator. So the
residual reads nothing the coordinator could not have received itself, and its result may go
there. It runs in a closed DuckDB; the semi-join keys that reduce its remote fragments are
gathered here and attached to them before they are fetched. Peers are dialled only at the agent locations of catalogued silos.

The request is a `RunResidual` (fedlake.agent.protocol). A remote fragment some semi-join reduces
is fetched once the fragments its keys come from are in, with those keys attached first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import pyarrow as pa

from fedlake.agent.gate import EgressPlan
from fedlake.agent.peers import Peer, open_peer
from fedlake.agent.protocol import FragmentReport, ResidualReport, ResidualSemiJoin, RunResidual
from fedlake.keyset import keys_if_they_pay
from fedlake.errors import FedlakeError
from fedlake.residual import Workspace, check_residual, semijoin_keys
from fedlake.silos.base import counted

if TYPE_CHECKING:
    from fedlake.agent.agent import Caller, SiloAgent

RESIDUAL_MEMORY = "2GB"
KEPT_REPORTS = 256
PEER_SCHEMES = ("grpc+tls://", "inprocess://")


def run_placed_residual(agent: SiloAgent, caller: Caller, request: RunResidual) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    names = [item.name for item in [*request.local, *request.imports]]
    if caller.transfer:
        raise FedlakeError(f"agent {agent.spec.name}: a transfer capability does not run residuals")
    agent.check_purpose(caller, request.purpose)
    imported = {i.name for i in request.imports}
    if len(set(names)) != len(names) or any(s.probe not in imported or s.sources - set(names) for s in request.semijoins):
        raise FedlakeError(f"agent {agent.spec.name}: a residual request names a fragment twice or a semi-join without its fragment")
    check_residual(request.sql, set(names))
    catalog = agent.policy.catalog
    for item in request.imports:
        if item.silo not in catalog.silos or item.silo == agent.spec.name or not item.location.startswith(PEER_SCHEMES):
            raise FedlakeError(f"agent {agent.spec.name}: an import must name another catalogued silo's agent over "
                               f"grpc+tls, not {item.silo!r} at {item.location!r}")

    # every local fragment is planned (and a refusal ledgered and raised) before anything runs
    plans = [(item.name, agent.plan(caller, item.sql, request.purpose)) for item in request.local]
    fragments: dict[str, FragmentReport] = {}
    filters: dict[str, dict[str, tuple[int, int]]] = {}
    notes: dict[str, list[str]] = {}
    lock = threading.Lock()
    workspace = Workspace(RESIDUAL_MEMORY)
    peers: dict[str, Peer] = {}
    loaded: dict[str, Future] = {}
    reducing: dict[str, list[ResidualSemiJoin]] = {}
    for semijoin in request.semijoins:
        reducing.setdefault(semijoin.probe, []).append(semijoin)

    def load(name: str, source: Callable[[], pa.RecordBatchReader]) -> None:
        started = time.perf_counter()

        def arrived(rows: int, nbytes: int) -> None:
            with lock:
                fragments[name] = FragmentReport(rows, nbytes, time.perf_counter() - started)

        workspace.load(name, source(), arrived)

    def local(plan: EgressPlan) -> Callable[[], pa.RecordBatchReader]:
        return lambda: pa.RecordBatchReader.from_batches(*agent.fragments.gated(caller, plan))

    def remote(name: str) -> pa.RecordBatchReader:
        """The import, reduced by the keys of the fragments its semi-joins take them from."""
        keys = []
        for semijoin in reducing.get(name, []):
            for source in semijoin.sources:
                loaded[source].result()
            values = semijoin_keys(workspace, semijoin.build, semijoin.keys_sql, set(names))
            keyset, why = keys_if_they_pay(values, semijoin.limit, semijoin.condition)
            with lock:
                if keyset is not None:
                    keys.append((semijoin.column, keyset, semijoin.condition))
                    filters.setdefault(name, {})[semijoin.condition] = (keyset.keys, keyset.nbytes)
                if why:
                    notes.setdefault(name, []).append(why)
        return peers[name].fetch(keys)

    try:
        for item in request.imports:
            peers[item.name] = open_peer(item.location, item.ticket, agent.peer_ca)
        with ThreadPoolExecutor(max_workers=len(names) or 1) as pool:
            for name, plan in plans:
                loaded[name] = pool.submit(load, name, local(plan))
            # the fragments that give keys first: a probe's thread waits only on fragments already started
            for item in sorted(request.imports, key=lambda i: i.name in reducing):
                loaded[item.name] = pool.submit(load, item.name, lambda name=item.name: remote(name))
            for future in loaded.values():
                future.result()
    except BaseException:
        workspace.close()
        raise
    finally:
        for peer in peers.values():
            peer.close()

    over = [f"-- over {name}: {item.sql}" for (name, _), item in zip(plans, request.local)]
    over += [f"-- over {item.name}: sent by silo {item.silo}'s agent" for item in request.imports]
    columns = [c.as_dict() for _, plan in plans for c in plan.columns]
    decision = "rewritten" if any(c["action"] != "allow" for c in columns) else "allowed"

    def finished(rows: int, nbytes: int) -> None:
        agent.ledger.record(
            requester=caller.identity, purpose=request.purpose, silo=agent.spec.name, destination=caller.region,
            operation="residual", fragment="\n".join([request.sql, *over]), columns=columns, decision=decision,
            rows=rows, nbytes=nbytes,
        )
        while len(agent.residual_reports) >= KEPT_REPORTS:
            agent.residual_reports.pop(next(iter(agent.residual_reports)))
        agent.residual_reports[request.id] = ResidualReport(caller.identity, fragments, filters, notes)

    result = workspace.run(request.sql, lambda rows, nbytes: None)
    return result.schema, counted(result, finished, each=agent.egress.add)
