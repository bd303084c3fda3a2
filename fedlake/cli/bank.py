"""`fedlake seed` (the demo bank) and `fedlake silos` (what each silo holds, counted in place)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedlake.cli import settings
from fedlake.errors import FedlakeError


def register(verbs: argparse._SubParsersAction) -> None:
    seed = verbs.add_parser("seed", help="generate the demo bank into the silos")
    seed.add_argument("--scale", type=float, default=1.0, help="1 = about 200k transactions and 10k loans")
    seed.add_argument("--seed", type=int, default=42)
    seed.add_argument(
        "--silos", dest="regional_silos", type=int, metavar="K",
        help="seed K regional silos (3 to 16, mixed kinds, the same rows in all) on a generated silos.yaml",
    )
    seed.add_argument(
        "--write-catalog", type=Path, metavar="PATH",
        help="where --silos writes its silos.yaml, with policies.yaml and expectations/ beside it "
        "(default: $FEDLAKE_HOME/silos-K/silos.yaml)",
    )
    seed.set_defaults(run=cmd_seed)

    silos = verbs.add_parser("silos", help="list every silo's tables and row counts, counted in place")
    silos.set_defaults(run=cmd_silos)


def cmd_seed(args: argparse.Namespace) -> int:
    from fedlake.silos import data_dir
    from fedlake.synth.seed import seed_demo_bank

    home = data_dir()
    if args.regional_silos is not None:
        from fedlake.catalog import load_catalog
        from fedlake.synth.regional_catalog import write_regional_catalog

        target = args.write_catalog or home / f"silos-{args.regional_silos}" / "silos.yaml"
        catalog = load_catalog(write_regional_catalog(args.silos, args.regional_silos, target))
        print(f"wrote {target} ({args.regional_silos} regional silos); use it with: export FEDLAKE_SILOS={target}")
    elif args.write_catalog is not None:
        raise FedlakeError("--write-catalog goes with --silos K")
    else:
        catalog = settings.catalog(args)
    report = seed_demo_bank(catalog, settings.deployment(args), home, args.scale, args.seed)
    print(f"seeded the demo bank (scale {report.scale:g}, seed {report.seed}) in {report.seconds:.1f}s")
    for silo, tables in report.rows.items():
        spec = catalog.silo(silo)
        counts = ", ".join(f"{t} {n:,}" for t, n in tables.items())
        print(f"  {silo:<8} ({spec.kind}, {spec.region}): {counts}")
    print(f"  ground truth (outside every silo): {report.truth_dir}")
    return 0


def cmd_silos(args: argparse.Namespace) -> int:
    from fedlake.silos import open_silo

    catalog = settings.catalog(args)
    for name, spec in catalog.silos.items():
        with open_silo(spec, settings.deployment(args)) as connector:
            tables = connector.list_tables()
            print(f"{name} ({spec.kind}, region {spec.region}):")
            for table in tables:
                declared = "declared" if table in spec.tables else "derived"
                print(f"  {table:<20} {connector.row_count(table):>12,} rows  [{declared}]")
    return 0
