"""The `fedlake` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedlake.catalog import default_catalog_path, load_catalog
from fedlake.errors import FedlakeError
from fedlake.silos import data_dir, open_silo


def _deployment(args: argparse.Namespace) -> str:
    import os

    return args.deployment or os.environ.get("FEDLAKE_DEPLOYMENT", "local")


def cmd_seed(args: argparse.Namespace) -> int:
    from fedlake.synth.seed import seed_demo_bank

    catalog = load_catalog(args.silos)
    home = data_dir()
    report = seed_demo_bank(catalog, _deployment(args), home, args.scale, args.seed)
    print(f"seeded the demo bank (scale {report.scale:g}, seed {report.seed}) in {report.seconds:.1f}s")
    for silo, tables in report.rows.items():
        spec = catalog.silo(silo)
        counts = ", ".join(f"{t} {n:,}" for t, n in tables.items())
        print(f"  {silo:<8} ({spec.kind}, {spec.region}): {counts}")
    print(f"  ground truth (outside every silo): {report.truth_dir}")
    return 0


def cmd_silos(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.silos)
    for name, spec in catalog.silos.items():
        with open_silo(spec, _deployment(args)) as connector:
            tables = connector.list_tables()
            print(f"{name} ({spec.kind}, region {spec.region}):")
            for table in tables:
                declared = "declared" if table in spec.tables else "derived"
                print(f"  {table:<20} {connector.row_count(table):>12,} rows  [{declared}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedlake", description="Query, check and train on data where it lies.")
    parser.add_argument("--silos", type=Path, default=None, help="silos.yaml (default: $FEDLAKE_SILOS or ./silos.yaml)")
    parser.add_argument("--deployment", choices=("local", "prod"), default=None, help="default: $FEDLAKE_DEPLOYMENT or local")
    sub = parser.add_subparsers(dest="command", required=True)

    seed = sub.add_parser("seed", help="generate the demo bank into the silos")
    seed.add_argument("--scale", type=float, default=1.0, help="1 = about 200k transactions and 10k loans")
    seed.add_argument("--seed", type=int, default=42)
    seed.set_defaults(run=cmd_seed)

    silos = sub.add_parser("silos", help="list every silo's tables and row counts, counted in place")
    silos.set_defaults(run=cmd_silos)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.silos = args.silos or default_catalog_path()
    try:
        return args.run(args)
    except FedlakeError as exc:
        print(f"fedlake: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
