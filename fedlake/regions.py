"""Regions and money, from silos.yaml: each region's currency and domestic countries, and the
exchange rates that put every amount in one currency (EUR).

They are configuration, not code, so that a silo in a new region (a `uk_lake` in region UK)
reaches the governed layer and federated training by declaring it, with nothing to change in
fedlake. Region names, currency and country codes end up as literals in the SQL the governed layer
writes, so they are held to strict shapes here, at load.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from fedlake.errors import ConfigError

REGION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
CURRENCY_CODE = re.compile(r"^[A-Z]{3}$")  # ISO 4217
COUNTRY_CODE = re.compile(r"^[A-Z]{2}$")  # ISO 3166-1 alpha-2
REGION_KEYS = ("currency", "domestic_countries")
REPORTING_CURRENCY = "EUR"


@dataclass(frozen=True)
class RegionSpec:
    """A region: the currency its accounts hold, and the counterparty countries that are not
    cross-border for an account held there."""

    name: str
    currency: str
    domestic_countries: tuple[str, ...]


@dataclass(frozen=True)
class Money:
    """The regions of a deployment and the value of one unit of each currency in EUR."""

    regions: dict[str, RegionSpec]
    rates_to_eur: dict[str, float]

    def region(self, name: str, source_file: str = "silos.yaml") -> RegionSpec:
        if name not in self.regions:
            declared = ", ".join(sorted(self.regions)) or "none"
            raise ConfigError(source_file, f"regions.{name}", f"region not declared (declared: {declared})")
        return self.regions[name]


def parse_money(path: str, raw_regions: Any, raw_rates: Any) -> Money:
    """The `regions:` and `exchange_rates_to_eur:` sections; both absent is an empty Money."""
    if raw_regions is None and raw_rates is None:
        return Money(regions={}, rates_to_eur={})
    rates = _parse_rates(path, raw_rates)
    if not isinstance(raw_regions, dict) or not raw_regions:
        raise ConfigError(path, "regions", "expected a mapping of region name to {currency, domestic_countries}")
    regions = {}
    for name, body in raw_regions.items():
        key = f"regions.{name}"
        if not isinstance(name, str) or not REGION_NAME.match(name):
            raise ConfigError(path, key, "a region name is a letter then letters, digits or underscores (at most 32)")
        if not isinstance(body, dict):
            raise ConfigError(path, key, "expected a mapping with currency and domestic_countries")
        unknown = set(body) - set(REGION_KEYS)
        if unknown:
            raise ConfigError(path, f"{key}.{sorted(unknown)[0]}", f"unknown key (allowed: {', '.join(REGION_KEYS)})")
        currency = body.get("currency")
        if not isinstance(currency, str) or not CURRENCY_CODE.match(currency):
            raise ConfigError(path, f"{key}.currency", "expected a three-letter ISO currency code, e.g. GBP")
        if currency not in rates:
            raise ConfigError(path, f"{key}.currency", f"no rate for {currency} in exchange_rates_to_eur")
        countries = body.get("domestic_countries")
        if not isinstance(countries, list) or not countries:
            raise ConfigError(path, f"{key}.domestic_countries", "expected a list of two-letter country codes, e.g. [GB]")
        for country in countries:
            if not isinstance(country, str) or not COUNTRY_CODE.match(country):
                raise ConfigError(path, f"{key}.domestic_countries", f"{str(country)[:20]!r} is not a two-letter country code")
        regions[name] = RegionSpec(name=name, currency=currency, domestic_countries=tuple(countries))
    return Money(regions=regions, rates_to_eur=rates)


def _parse_rates(path: str, raw: Any) -> dict[str, float]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(path, "exchange_rates_to_eur", "expected a mapping of currency code to the value of one unit in EUR")
    rates = {}
    for currency, rate in raw.items():
        key = f"exchange_rates_to_eur.{currency}"
        if not isinstance(currency, str) or not CURRENCY_CODE.match(currency):
            raise ConfigError(path, key, "expected a three-letter ISO currency code")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
            raise ConfigError(path, key, f"expected a positive number, not {str(rate)[:20]!r}")
        rates[currency] = float(rate)
    if rates.get(REPORTING_CURRENCY) != 1.0:
        raise ConfigError(path, f"exchange_rates_to_eur.{REPORTING_CURRENCY}", "amounts are reported in EUR: its rate must be 1.0")
    return rates
