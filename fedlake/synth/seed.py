"""Seeding: write the demo bank into the silos, and its ground truth outside every silo.

Every regional silo silos.yaml declares gets its share of the bank, whatever its region
(fedlake.synth.layout places the generator's markets onto the declared silos).

Generation streams block by block; each table's rows are first spooled to a local Parquet file and
then loaded into its silo in one atomic load, so memory stays bounded at any scale and a failed seed
never leaves a half-written table behind.
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from fedlake.catalog import Catalog
from fedlake.errors import FedlakeError
from fedlake.silos import PostgresConnector, open_silo
from fedlake.synth import bank
from fedlake.synth.layout import plan_layout

SPOOL_BATCH_ROWS = 100_000
TRUTH = "truth"


@dataclass
class SeedReport:
    scale: float
    seed: int
    rows: dict[str, dict[str, int]] = field(default_factory=dict)  # silo -> table -> rows
    truth_dir: Path | None = None
    seconds: float = 0.0


def silo_by_region(catalog: Catalog) -> dict[str, str]:
    """The demo bank has one silo per region; find it in the catalog, or say which is missing."""
    by_region = {spec.region: name for name, spec in catalog.silos.items()}
    missing = [r for r in bank.REGIONS if r not in by_region]
    if missing:
        raise FedlakeError(f"{catalog.path}: no silo for region(s) {', '.join(missing)}; the demo bank needs one per region")
    for region, tables in bank.REGION_TABLES.items():
        spec = catalog.silo(by_region[region])
        undeclared = [t for t in tables if t not in spec.tables]
        if undeclared:
            raise FedlakeError(f"{catalog.path}: silos.{spec.name}.tables: the demo bank writes {undeclared}, not declared")
    return {region: by_region[region] for region in bank.REGIONS}


def seed_demo_bank(
    catalog: Catalog, deployment: str, home: Path, scale: float, seed: int, truth_dir: Path | None = None
) -> SeedReport:
    if scale <= 0:
        raise FedlakeError(f"--scale must be positive, got {scale}")
    started = time.monotonic()
    layout = plan_layout(catalog)
    truth_dir = truth_dir or home / "truth"
    schemas = bank.schemas()
    spool = home / f"_seed_spool_{uuid.uuid4().hex[:8]}"
    spool.mkdir(parents=True)
    # a silo's files are silo__table, the truth's truth.table (a dot no silo name has)
    spooled = {(silo, t): spool / f"{silo}__{t}.parquet" for silo in layout.placements for t in layout.tables(silo)}
    spooled |= {(TRUTH, t): spool / f"{TRUTH}.{t}.parquet" for t in bank.TRUTH_TABLES}
    writers = {(g, t): pq.ParquetWriter(path, schemas[t]) for (g, t), path in spooled.items()}

    report = SeedReport(scale=scale, seed=seed)
    try:
        for block in map(layout.place, bank.generate(scale, seed)):
            for silo, tables in block.silo_tables.items():
                for table, rows in tables.items():
                    writers[(silo, table)].write_table(rows.cast(schemas[table]))
            for table, rows in block.truth.items():
                writers[(TRUTH, table)].write_table(rows.cast(schemas[table]))
        for w in writers.values():
            w.close()

        for silo in layout.placements:
            with open_silo(catalog.silo(silo), deployment, home) as connector:
                if isinstance(connector, PostgresConnector):
                    # the agent's reader and writer roles exist before it first connects
                    connector.ensure_roles()
                for table in layout.tables(silo):
                    source = pq.ParquetFile(spooled[(silo, table)])
                    rows = connector.load(table, schemas[table], source.iter_batches(SPOOL_BATCH_ROWS))
                    report.rows.setdefault(silo, {})[table] = rows

        truth_dir.mkdir(parents=True, exist_ok=True)
        for table in bank.TRUTH_TABLES:
            shutil.move(spooled[(TRUTH, table)], truth_dir / f"{table}.parquet")
        report.truth_dir = truth_dir
    finally:
        for w in writers.values():
            w.close()
        shutil.rmtree(spool, ignore_errors=True)
    report.seconds = time.monotonic() - started
    return report
