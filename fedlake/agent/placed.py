"""A residual the planner placed in a silo, run by that silo's agent: the cheapest site the policy
allows, where the other silos' fragments come straight from their agents.

Only a coordinator may place a residual. The other silos' fragments come under capabilities whose
senders checked that their masks for this silo's region are those for the coordinator's own; this
silo's own fragments are planned exactly as if they were leaving for the coordinator. So the
residual reads nothing the coordinator could not have received itself, and its result may go
there. It runs in a closed DuckDB; the semi-join filters its remote fragments wait for are built
here and sent to their agents. Peers are dialled only at the agent locations of catalogued silos.

The request, from the coordinator:
  {"id", "purpose", "sql": the residual, "local": [{"name", "sql"}],
   "imports": [{"name", "silo", "location", "ticket", "schema": {column: SQL type}}],
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

from fedlake.agent.gate import EgressPlan
from fedlake.agent.peers import Peer, open_peer
from fedlake.bloom import filter_if_it_pays
from fedlake.errors import FedlakeError
from fedlake.residual import Workspace, check_residual
from fedlake.silos.base import counted

if TYPE_CHECKING:
    from fedlake.agent.agent import Caller, SiloAgent

RESIDUAL_MEMORY = "2GB"
KEPT_REPORTS = 256
PEER_SCHEMES = ("grpc+tls://", "inprocess://")


def run_placed_residual(agent: SiloAgent, caller: Caller, request: dict[str, Any]) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    try:
        rid, purpose, sql = str(request["id"]), request["purpose"], request["sql"]
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
    catalog = agent.policy.catalog
    for item in imports:
        if item.get("silo") not in catalog.silos or item["silo"] == agent.spec.name or not str(item.get("location", "")).startswith(PEER_SCHEMES):
            raise FedlakeError(f"agent {agent.spec.name}: an import must name another catalogued silo's agent over "
                               f"grpc+tls, not {item.get('silo')!r} at {item.get('location')!r}")

    # every local fragment is planned (and a refusal ledgered and raised) before anything runs
    final = caller.region
    plans = [(item["name"], agent.plan(caller, item["sql"], purpose)) for item in local]
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

    def gated(plan: EgressPlan) -> Callable[[], pa.RecordBatchReader]:
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
                loaded[name] = pool.submit(load, name, gated(plan))
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

    over = [f"-- over {name}: {item['sql']}" for (name, _), item in zip(plans, local)]
    over += [f"-- over {item['name']}: sent by silo {item['silo']}'s agent" for item in imports]
    columns = [c.as_dict() for _, plan in plans for c in plan.columns]
    decision = "rewritten" if any(c["action"] != "allow" for c in columns) else "allowed"

    def finished(rows: int, nbytes: int) -> None:
        agent.ledger.record(
            requester=caller.identity, purpose=purpose, silo=agent.spec.name, destination=final, operation="residual",
            fragment="\n".join([sql, *over]), columns=columns, decision=decision, rows=rows, nbytes=nbytes,
        )
        while len(agent.residual_reports) >= KEPT_REPORTS:
            agent.residual_reports.pop(next(iter(agent.residual_reports)))
        agent.residual_reports[rid] = report

    result = workspace.run(sql, lambda rows, nbytes: None)
    return result.schema, counted(result, finished, each=agent.egress.add)
