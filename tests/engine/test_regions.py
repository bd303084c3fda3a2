"""Regions and exchange rates are configuration: silos.yaml declares them, the catalog validates
them in one line naming file and key, and nothing in fedlake outside the demo generator needs its
constants."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fedlake.catalog import load_catalog
from fedlake.errors import ConfigError
from tests.engine.test_catalog import REPO, shipped, write


def test_shipped_catalog_declares_every_silos_region_with_its_money():
    catalog = load_catalog(REPO / "silos.yaml")
    money = catalog.money
    assert money.rates_to_eur["EUR"] == 1.0
    for spec in catalog.silos.values():
        region = money.region(spec.region)
        assert region.currency in money.rates_to_eur and region.domestic_countries
    assert len(money.region("EU").domestic_countries) == 27


def test_a_new_region_is_declared_in_configuration_alone(tmp_path):
    raw = shipped()
    raw["exchange_rates_to_eur"]["GBP"] = 1.17
    raw["regions"]["UK"] = {"currency": "GBP", "domestic_countries": ["GB"]}
    raw["silos"]["uk_lake"] = {**raw["silos"]["sg_lake"], "region": "UK", "connection": {"local": {"path": "uk_lake"}}}
    catalog = load_catalog(write(tmp_path, raw))
    assert catalog.money.region("UK").domestic_countries == ("GB",)
    assert catalog.money.rates_to_eur["GBP"] == 1.17


@pytest.mark.parametrize(
    "mutate, key, says",
    [
        (lambda r: r["silos"]["sg_lake"].update(region="UK"), "silos.sg_lake.region", "'UK' is not declared under regions"),
        (lambda r: r["regions"]["SG"].update(currency="GBP"), "regions.SG.currency", "no rate for GBP"),
        (lambda r: r["regions"]["SG"].update(currency="sgd'--"), "regions.SG.currency", "three-letter ISO currency"),
        (lambda r: r["regions"]["SG"].update(domestic_countries=["SG', 'X"]), "regions.SG.domestic_countries", "two-letter"),
        (lambda r: r["regions"]["SG"].update(domestic_countries=[]), "regions.SG.domestic_countries", "list of two-letter"),
        (lambda r: r["regions"]["SG"].update(timezone="SGT"), "regions.SG.timezone", "unknown key"),
        (lambda r: r["regions"].update({"S G": r["regions"]["SG"]}), "regions.S G", "a region name"),
        (lambda r: r["exchange_rates_to_eur"].update(USD=-1), "exchange_rates_to_eur.USD", "positive number"),
        (lambda r: r["exchange_rates_to_eur"].update(USD="0.92"), "exchange_rates_to_eur.USD", "positive number"),
        (lambda r: r["exchange_rates_to_eur"].update(EUR=2.0), "exchange_rates_to_eur.EUR", "must be 1.0"),
        (lambda r: r.pop("exchange_rates_to_eur"), "exchange_rates_to_eur", "mapping of currency code"),
        (lambda r: r.update(regions=["EU"]), "regions", "mapping of region name"),
    ],
)
def test_malformed_regions_are_one_line_naming_file_and_key(tmp_path, mutate, key, says):
    raw = shipped()
    mutate(raw)
    path = write(tmp_path, raw)
    with pytest.raises(ConfigError) as error:
        load_catalog(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {key}: ") and says in message and "\n" not in message


def test_no_product_code_imports_the_demo_generator():
    """Only the generator itself and the CLI (whose seed verb runs it) may use fedlake.synth."""
    offenders = []
    for folder in ("fedlake", "assets", "resources", "sensors", "platform_defs"):
        for path in (REPO / folder).rglob("*.py"):
            relative = path.relative_to(REPO)
            if relative.parts[:2] in (("fedlake", "synth"), ("fedlake", "cli")) or relative == Path("fedlake/cli.py"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                if any(name.startswith("fedlake.synth") for name in names):
                    offenders.append(str(relative))
    assert offenders == []
