"""EXPLAIN and EXPLAIN ANALYZE: the fragments, the SQL each silo runs, their sites, the rows and
bytes estimated (and, after a run, actual) at every border crossing, and each policy decision."""

from __future__ import annotations

from fedlake.catalog import Catalog
from fedlake.query.execute import FederatedPlan


def _n(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _decision(d: dict) -> str:
    rules = "; ".join(d.get("rules", []))
    reason = f" ({d['reason']})" if d.get("reason") else ""
    return f"    policy: {d['output']}: {d['action'].upper()} from {', '.join(d['sources']) or 'no column'} [{rules}]{reason}"


def _crossing(source: str, target: str, site: str | None) -> str:
    where = f", to silo {site}'s agent" if site else ""
    return (f"stays in region {source}" if source == target else f"crosses {source} -> {target}") + where


def render(plan: FederatedPlan, catalog: Catalog, analyze: bool = False) -> str:
    lines = [f"federated query for {plan.purpose}; results to the governed zone ({plan.destination})"]
    target = catalog.silo(plan.site).region if plan.site else plan.destination
    for run in plan.runs:
        f = run.fragment
        spec = catalog.silo(f.silo)
        what = {"pushed": "pushed whole", "join": "join among its own tables", "scan": "table scan"}[f.kind]
        if f.partial:
            what += f", partial aggregation in silo: {f.partial}"
        if f.filters:
            what += f", filters in silo: {' AND '.join(f.filters)}"
        lines.append(f"  fragment {f.name} at silo {f.silo} ({spec.kind}, {spec.region}): {what}; tables {', '.join(f.tables)}")
        lines.append(f"    SQL in silo: {run.sql_in_silo or f.sql}")
        lines += [f"    {note}" for note in f.notes]
        for semijoin in run.semijoins:
            keys = ", ".join(f"{k.fragment}.{k.name}" for k in semijoin.build)
            if semijoin.keys_sql:
                keys = f"the subquery over {', '.join(semijoin.reads)} ({keys})"
            line = (f"    semi-join ({semijoin.condition}): the silo sends only rows whose {semijoin.probe.name} "
                    f"may be among the keys of {keys}, sent to it as a key set")
            if analyze and semijoin.condition in run.filters:
                count, nbytes = run.filters[semijoin.condition]
                line += f"; actual {count:,} keys in {nbytes:,} bytes"
            lines.append(line)
        lines += [f"    {note}" for note in run.notes]
        if run.at_site:
            line = f"    stays in silo {f.silo}, where the residual runs: estimated {_n(run.estimated_rows)} rows, {_n(run.estimated_bytes)} bytes"
        else:
            line = f"    border ({_crossing(spec.region, target, plan.site)}): estimated {_n(run.estimated_rows)} rows, {_n(run.estimated_bytes)} bytes"
        if analyze:
            line += f"; actual {_n(run.rows)} rows, {_n(run.bytes)} bytes in {run.seconds or 0:.3f}s"
        lines.append(line)
        lines += [_decision(d) for d in run.decisions]
        if run.denied:
            lines.append(f"    policy: DENIED: {run.denied}")
    if plan.site:
        spec = catalog.silo(plan.site)
        lines.append(f"  residual at silo {plan.site} ({spec.kind}, {spec.region}; DuckDB in its agent): {plan.cut.residual}")
        line = (f"    border (result, {_crossing(spec.region, plan.destination, None)}): estimated "
                f"{_n(plan.result_estimated_rows)} rows, {_n(plan.result_estimated_bytes)} bytes")
        if analyze:
            line += f"; actual {_n(plan.result_rows)} rows, {_n(plan.result_bytes)} bytes"
        lines.append(line)
    else:
        lines.append(f"  residual at the governed zone ({plan.destination}, DuckDB): {plan.cut.residual}")
    if plan.sites:
        considered = []
        for site in plan.sites:
            name = f"silo {site.silo}" if site.silo else "the governed zone"
            chosen = " (chosen)" if site.silo == plan.site else ""
            blocked = f" (not allowed: {site.blocked})" if site.blocked else ""
            considered.append(f"{name} {site.estimated_bytes:,} bytes{chosen}{blocked}")
        lines.append(f"  placement, estimated bytes crossing per site (result {_n(plan.result_estimated_rows)} rows): "
                     + "; ".join(considered))
    estimated = sum(r.estimated_bytes or 0 for r in plan.runs if not r.at_site)
    if plan.site:
        estimated += plan.result_estimated_bytes or 0
    total = f"  bytes crossing silo borders: estimated {estimated:,}"
    if analyze:
        total += f"; actual {_n(plan.bytes_crossing)}; result {_n(plan.result_rows)} rows, {_n(plan.result_bytes)} bytes"
        total += f"; {plan.seconds or 0:.3f}s"
    lines.append(total)
    return "\n".join(lines)
