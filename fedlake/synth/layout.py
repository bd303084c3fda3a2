"""Where the demo bank's rows go: its three home markets placed onto the silos silos.yaml declares.

The generator plants its truth in three home markets, EU, US and SG (fedlake.synth.bank). A
deployment may declare any number of regional silos, in regions of any name, so seeding places the
markets onto them:

- the silo that declares `loans` is the lender and holds the EU market, whose customers borrow;
- every other regional silo takes a share of the US or SG market: one whose region is named US or
  SG takes that market, the others go wherever a silo would hold the most customers;
- a market held by several silos is split by person (a stable hash of the national id), so one
  person's accounts and transactions in that market stay together and their customer records in
  every market name the same home region;
- rows placed in a region whose money or borders differ from their market's are restated in the
  region's own (silos.yaml `regions`): amounts converted at the declared rates, domestic
  counterparties moved into the region's countries and foreign ones kept foreign, so each person's
  cross-border share is kept exactly and their EUR amounts to the cent.

With the demo's three silos (one per market, in regions of the market's name and money) placement
is the identity and changes no byte. Otherwise the loan truth is recomputed from the placed rows
with the declared money, so the oracle is exactly the documented formula on the data the silos
hold; defaults were drawn from the generator's own, which differs by rounding to the cent.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fedlake.catalog import Catalog
from fedlake.errors import ConfigError
from fedlake.regions import RegionSpec
from fedlake.synth import bank, default_model, vocabulary

LENDING_MARKET = "EU"
SHARED_MARKETS = tuple(m for m in bank.REGIONS if m != LENDING_MARKET)
_MARKET_WEIGHT = dict(zip(bank.REGIONS, bank.HOME_SHARES))


@dataclass(frozen=True)
class Placement:
    """One silo's part of the bank: a share of one market, restated in its region if needs be."""

    silo: str
    market: str
    region: RegionSpec
    restated: bool


@dataclass(frozen=True)
class Layout:
    placements: dict[str, Placement]  # silo -> its placement, in catalog order
    shards: dict[str, tuple[str, ...]]  # market -> the silos that split its customers
    rates_to_eur: dict[str, float]
    lender: str

    @property
    def identity(self) -> bool:
        """One silo per market, each in a region of the market's name and money: nothing to do."""
        return all(len(s) == 1 for s in self.shards.values()) and not any(
            p.restated or p.region.name != p.market for p in self.placements.values()
        )

    def tables(self, silo: str) -> tuple[str, ...]:
        return bank.REGION_TABLES[self.placements[silo].market]

    def place(self, block: bank.Block) -> bank.Block:
        """The block's rows by silo, and its truth as those silos hold it."""
        if self.identity:
            return bank.Block(
                silo_tables={self.shards[m][0]: tables for m, tables in block.silo_tables.items()}, truth=block.truth
            )
        placed: dict[str, dict[str, pa.Table]] = {}
        for market, silos in self.shards.items():
            for silo, tables in zip(silos, _split(block.silo_tables[market], len(silos))):
                placement = self.placements[silo]
                tables["customers"] = self._home_regions(tables["customers"])
                if placement.restated:
                    tables = _restate(tables, market, placement.region, self.rates_to_eur)
                placed[silo] = tables
        return bank.Block(silo_tables=placed, truth=self._truth(block.truth, placed))

    def _home_regions(self, customers: pa.Table) -> pa.Table:
        """home_region names the region of the silo that holds the person's home market."""
        person = _person_hash(customers.column("national_id"))
        market = np.asarray(customers.column("home_region").to_pylist(), dtype=object)
        home = np.empty(len(market), dtype=object)
        for m, silos in self.shards.items():
            mine = market == m
            regions = np.array([self.placements[s].region.name for s in silos], dtype=object)
            home[mine] = regions[person[mine] % len(silos)]
        index = customers.schema.get_field_index("home_region")
        return customers.set_column(index, customers.schema.field(index), pa.array(home.tolist(), pa.string()))

    def _truth(self, truth: dict[str, pa.Table], placed: dict[str, dict[str, pa.Table]]) -> dict[str, pa.Table]:
        truth = dict(truth)
        domestic = {silo: self.placements[silo].region.domestic_countries for silo in placed}
        features = default_model.compute_default_features(placed, self.rates_to_eur, domestic)
        lender = placed[self.lender]
        truth["loan_truth"] = default_model.true_default_probability(features, lender["loans"], lender["customers"])
        account_region = _region_of(placed, "accounts", "account_id", self.placements)
        txn_region = _region_of(placed, "transactions", "txn_id", self.placements)
        members = _with_region(truth["aml_pattern_accounts"], "account_id", account_region)
        truth["aml_pattern_accounts"] = members
        truth["aml_pattern_transactions"] = _with_region(truth["aml_pattern_transactions"], "txn_id", txn_region)
        truth["aml_patterns"] = _pattern_regions(truth["aml_patterns"], members)
        return truth


def plan_layout(catalog: Catalog) -> Layout:
    """Place the markets onto the catalog's silos, or say in one line what the catalog lacks."""
    where = catalog.path
    if not catalog.money.regions:
        raise ConfigError(where, "regions", "the demo bank needs each silo's region declared (currency, domestic_countries)")
    lenders, others = [], []
    for name, spec in catalog.silos.items():
        wanted = bank.REGION_TABLES[LENDING_MARKET if "loans" in spec.tables else SHARED_MARKETS[0]]
        missing = [t for t in wanted if t not in spec.tables]
        if missing:
            raise ConfigError(where, f"silos.{name}.tables", f"the demo bank writes {', '.join(missing)} here, not declared")
        (lenders if "loans" in spec.tables else others).append(name)
    if len(lenders) != 1:
        raise ConfigError(where, "silos", f"the demo bank lends from exactly one silo, the one declaring loans (found {len(lenders)})")
    if len(others) < len(SHARED_MARKETS):
        raise ConfigError(
            where, "silos",
            f"the demo bank needs {len(SHARED_MARKETS) + 1} regional silos or more: the lender and one for each of "
            f"its {' and '.join(SHARED_MARKETS)} customers (found {len(others) + 1})",
        )
    shards: dict[str, list[str]] = {m: [] for m in bank.REGIONS}
    shards[LENDING_MARKET].append(lenders[0])
    named = [s for s in others if catalog.silo(s).region in SHARED_MARKETS]
    for silo in named:
        shards[catalog.silo(silo).region].append(silo)
    for silo in (s for s in others if s not in named):
        market = max(SHARED_MARKETS, key=lambda m: _MARKET_WEIGHT[m] / len(shards[m]) if shards[m] else float("inf"))
        shards[market].append(silo)
    empty = [m for m in SHARED_MARKETS if not shards[m]]
    if empty:
        raise ConfigError(where, "silos", f"no silo takes the demo bank's {empty[0]} customers: declare one in another region")
    placements = {}
    market_of = {silo: m for m, silos in shards.items() for silo in silos}
    for silo in catalog.silos:
        region = catalog.money.region(catalog.silo(silo).region, where)
        market = market_of[silo]
        placements[silo] = Placement(silo, market, region, _differs(market, region, catalog.money.rates_to_eur))
    return Layout(placements, {m: tuple(s) for m, s in shards.items()}, dict(catalog.money.rates_to_eur), lenders[0])


def _differs(market: str, region: RegionSpec, rates: dict[str, float]) -> bool:
    currency = vocabulary.REGION_CURRENCY[market]
    return (
        region.currency != currency
        or set(region.domestic_countries) != set(default_model.REGION_COUNTRIES[market])
        or rates[region.currency] != default_model.FX_TO_EUR[currency]
    )


def _person_hash(national_ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A stable hash of each national id (CRC-32: the same in every process and on every run)."""
    return np.array([zlib.crc32(n.encode()) for n in national_ids.to_pylist()], dtype=np.int64)


def _split(tables: dict[str, pa.Table], n: int) -> list[dict[str, pa.Table]]:
    """A market's tables cut into n shares by person; accounts, transactions and cases follow."""
    if n == 1:
        return [dict(tables)]
    customers, accounts = tables["customers"], tables["accounts"]
    customer_shard = _person_hash(customers.column("national_id")) % n
    account_shard = customer_shard[_positions(accounts.column("customer_id"), customers.column("customer_id"))]
    shard_of = {
        "customers": customer_shard,
        "accounts": account_shard,
        "transactions": account_shard[_positions(tables["transactions"].column("account_id"), accounts.column("account_id"))],
        "aml_cases": account_shard[_positions(tables["aml_cases"].column("account_id"), accounts.column("account_id"))],
    }
    if "loans" in tables:
        shard_of["loans"] = customer_shard[_positions(tables["loans"].column("customer_id"), customers.column("customer_id"))]
    return [{name: table.filter(pa.array(shard_of[name] == i)) for name, table in tables.items()} for i in range(n)]


def _positions(values: pa.ChunkedArray, keys: pa.ChunkedArray) -> np.ndarray:
    found = pc.index_in(values, value_set=keys.combine_chunks())
    if found.null_count:
        raise ValueError("a row references a key absent from its market's tables")
    return found.to_numpy(zero_copy_only=False).astype(np.int64)


def _restate(tables: dict[str, pa.Table], market: str, region: RegionSpec, rates: dict[str, float]) -> dict[str, pa.Table]:
    """The market's rows in the region's money and borders (see the module's docstring)."""
    factor = default_model.FX_TO_EUR[vocabulary.REGION_CURRENCY[market]] / rates[region.currency]
    txns = tables["transactions"]
    amount = np.maximum(np.round(txns.column("amount").to_numpy() * factor, 2), 0.01)
    country = txns.column("counterparty_country")
    market_domestic = default_model.REGION_COUNTRIES[market]
    was_domestic = pc.fill_null(pc.is_in(country, value_set=pa.array(list(market_domestic), pa.string())), False)
    now_domestic = pc.fill_null(pc.is_in(country, value_set=pa.array(list(region.domestic_countries), pa.string())), False)
    abroad = next(c for c in (*market_domestic, *vocabulary.COUNTRIES) if c not in region.domestic_countries)
    country = pc.if_else(was_domestic, region.domestic_countries[0], pc.if_else(now_domestic, abroad, country))
    txns = _replace(txns, amount=pa.array(amount), counterparty_country=country, currency=region.currency)
    return {**tables, "transactions": txns, "accounts": _replace(tables["accounts"], currency=region.currency)}


def _replace(table: pa.Table, **columns: pa.Array | pa.ChunkedArray | str) -> pa.Table:
    for name, values in columns.items():
        index = table.schema.get_field_index(name)
        field = table.schema.field(index)
        if isinstance(values, str):
            values = pa.array([values] * table.num_rows, field.type)
        table = table.set_column(index, field, values.cast(field.type))
    return table


def _region_of(placed: dict[str, dict[str, pa.Table]], table: str, key: str, placements: dict[str, Placement]) -> tuple[pa.Array, pa.Array]:
    """Every key of a table across the placed silos, and the region of the silo holding it."""
    keys = pa.concat_arrays([placed[s][table].column(key).combine_chunks() for s in placed])
    names = pa.array([placements[s].region.name for s in placed], pa.string())
    silo_of_row = np.repeat(np.arange(len(placed)), [placed[s][table].num_rows for s in placed])
    return keys, pc.take(names, pa.array(silo_of_row))


def _with_region(truth: pa.Table, key: str, region_of: tuple[pa.Array, pa.Array]) -> pa.Table:
    keys, regions = region_of
    where = pc.index_in(truth.column(key), value_set=keys)
    return _replace(truth, region=pc.take(regions, where))


def _pattern_regions(patterns: pa.Table, members: pa.Table) -> pa.Table:
    regions: dict[str, set[str]] = {}
    for pattern, region in zip(members.column("pattern_id").to_pylist(), members.column("region").to_pylist()):
        regions.setdefault(pattern, set()).add(region)
    joined = [",".join(sorted(regions.get(p, ()))) for p in patterns.column("pattern_id").to_pylist()]
    return _replace(patterns, regions=pa.array(joined, pa.string()))
