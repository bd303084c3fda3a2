"""A silos.yaml with K regional silos, for `fedlake seed --silos K` and the scale-out benchmark.

The first three are the demo's (eu_core, us_lake, sg_lake, so policies.yaml applies unchanged);
each further silo is a new region with its own currency and country, and the kinds go round
parquet, s3, postgres, so that every K mixes them. Tables, classifications and the governed zone
come from a base silos.yaml (the shipped one), so a generated catalog declares what the demo does.
Seeding it at a scale writes the same rows as the demo at that scale, shared among K silos
(fedlake.synth.layout).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import yaml

from fedlake.catalog import read_yaml
from fedlake.errors import FedlakeError

DEMO_SILOS = ("eu_core", "us_lake", "sg_lake")
# New regions: name, currency, value of one unit in EUR (rounded, late 2025), domestic country.
NEW_REGIONS = (
    ("UK", "GBP", 1.17, "GB"), ("CH", "CHF", 1.07, "CH"), ("AU", "AUD", 0.57, "AU"), ("CA", "CAD", 0.62, "CA"),
    ("NZ", "NZD", 0.5, "NZ"), ("AE", "AED", 0.24, "AE"), ("HK", "HKD", 0.11, "HK"), ("NO", "NOK", 0.085, "NO"),
    ("IL", "ILS", 0.26, "IL"), ("SA", "SAR", 0.23, "SA"), ("QA", "QAR", 0.24, "QA"), ("KW", "KWD", 2.8, "KW"),
    ("BH", "BHD", 2.3, "BH"),
)
KIND_CYCLE = ("parquet", "s3", "postgres")
MAX_SILOS = len(DEMO_SILOS) + len(NEW_REGIONS)


def regional_catalog(base: dict[str, Any], silos: int) -> dict[str, Any]:
    """The base catalog's demo silos plus silos - 3 new regional ones, as plain YAML data."""
    if not len(DEMO_SILOS) <= silos <= MAX_SILOS:
        raise FedlakeError(f"--silos must be between {len(DEMO_SILOS)} and {MAX_SILOS}, got {silos}")
    missing = [s for s in DEMO_SILOS if s not in (base.get("silos") or {})]
    if missing:
        raise FedlakeError(f"the base silos.yaml has no {', '.join(missing)} to start from")
    raw = {key: copy.deepcopy(value) for key, value in base.items() if not str(key).startswith("x-")}
    raw["silos"] = {name: copy.deepcopy(base["silos"][name]) for name in DEMO_SILOS}
    regional_tables = raw["silos"]["us_lake"]["tables"]
    for i, (region, currency, rate, country) in enumerate(NEW_REGIONS[: silos - len(DEMO_SILOS)]):
        kind = KIND_CYCLE[i % len(KIND_CYCLE)]
        name = f"{region.lower()}_{'core' if kind == 'postgres' else 'lake'}"
        raw["exchange_rates_to_eur"][currency] = rate
        raw["regions"][region] = {"currency": currency, "domestic_countries": [country]}
        raw["silos"][name] = {
            "kind": kind,
            "region": region,
            "connection": _connection(name, kind),
            "agent": {"prod": {"location": {"env": f"{name.upper()}_AGENT"}}},
            "tables": copy.deepcopy(regional_tables),
        }
    return raw


def _connection(name: str, kind: str) -> dict[str, Any]:
    env = name.upper()
    if kind == "postgres":
        prod = {"dsn": {"env": f"{env}_DSN"}, "writer_dsn": {"env": f"{env}_WRITER_DSN"}, "owner_dsn": {"env": f"{env}_OWNER_DSN"}}
        return {"local": {"embedded": name}, "prod": prod}
    if kind == "s3":
        prod = {
            "bucket": {"env": f"{env}_BUCKET"}, "prefix": name, "endpoint_url": {"env": f"{env}_ENDPOINT_URL"},
            "access_key_id": {"env": "AWS_ACCESS_KEY_ID"}, "secret_access_key": {"env": "AWS_SECRET_ACCESS_KEY"},
        }
        return {"local": {"path": name}, "prod": prod}
    return {"local": {"path": name}, "prod": {"path": {"env": f"{env}_ROOT"}}}


def write_regional_catalog(base: str | Path, silos: int, out: str | Path) -> Path:
    """Write the K-silo catalog to `out`, with the base's policies.yaml and expectations/ beside it
    unless it has its own (their rules name tables and classifications, which stay the same)."""
    out = Path(out)
    raw = regional_catalog(read_yaml(str(base)), silos)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = f"# {silos} regional silos, generated from {Path(base).name} by `fedlake seed --silos {silos}`.\n"
    out.write_text(header + yaml.safe_dump(raw, sort_keys=False, width=120))
    policies, expectations = Path(base).with_name("policies.yaml"), Path(base).with_name("expectations")
    if policies.exists() and not out.with_name("policies.yaml").exists():
        shutil.copyfile(policies, out.with_name("policies.yaml"))
    if expectations.is_dir() and not out.with_name("expectations").exists():
        shutil.copytree(expectations, out.with_name("expectations"))
    return out

