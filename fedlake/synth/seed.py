"""Seeding: write the demo bank into the silos, and its ground truth outside every silo.

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

SPOOL_BATCH_ROWS = 100_000


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
    silos = silo_by_region(catalog)
    truth_dir = truth_dir or home / "truth"
    schemas = bank.schemas()
    spool = home / f"_seed_spool_{uuid.uuid4().hex[:8]}"
    spool.mkdir(parents=True)
    groups = [*((region, table) for region, tables in bank.REGION_TABLES.items() for table in tables)]
    groups += [("truth", table) for table in bank.TRUTH_TABLES]
    writers = {(g, t): pq.ParquetWriter(spool / f"{g}__{t}.parquet", schemas[t]) for g, t in groups}

    report = SeedReport(scale=scale, seed=seed)
    try:
        for block in bank.generate(scale, seed):
            for region, tables in block.silo_tables.items():
                for table, rows in tables.items():
                    writers[(region, table)].write_table(rows.cast(schemas[table]))
            for table, rows in block.truth.items():
                writers[("truth", table)].write_table(rows.cast(schemas[table]))
        for w in writers.values():
            w.close()

        for region, silo in silos.items():
            with open_silo(catalog.silo(silo), deployment, home) as connector:
                if isinstance(connector, PostgresConnector):
                    # the agent's reader and writer roles exist before it first connects
                    connector.ensure_roles()
                for table in bank.REGION_TABLES[region]:
                    source = pq.ParquetFile(spool / f"{region}__{table}.parquet")
                    rows = connector.load(table, schemas[table], source.iter_batches(SPOOL_BATCH_ROWS))
                    report.rows.setdefault(silo, {})[table] = rows

        truth_dir.mkdir(parents=True, exist_ok=True)
        for table in bank.TRUTH_TABLES:
            shutil.move(spool / f"truth__{table}.parquet", truth_dir / f"{table}.parquet")
        report.truth_dir = truth_dir
    finally:
        for w in writers.values():
            w.close()
        shutil.rmtree(spool, ignore_errors=True)
    report.seconds = time.monotonic() - started
    return report
