"""Owners, tags, kinds and freshness: what the Dagster UI says about every asset, decided in one place.

The assets say what they compute; this module says who answers for them, where they live and how
fresh they should be, per deployment. So the governed zone's assets carry `postgres` in prod (where
the zone is a PostgreSQL schema) and `duckdb` locally (a Parquet lake read by DuckDB), each in-silo
asset its silo's kind, and every asset that lives somewhere a `region` tag naming where.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import dagster as dg

from fedlake.catalog import Catalog

PLATFORM_TEAM = "team:data-platform"  # the governed zone, its marts and the audit ledger
ML_TEAM = "team:ml-platform"  # the models and their registry
MARTS_GROUP = "marts"
KIND_TAG_PREFIX = "dagster/kind/"
MODELS_GROUP = "models"
# Engines that the governed zone's kind replaces: the assets name DuckDB, the deployment decides.
_ZONE_ENGINES = frozenset({"duckdb", "postgres", "parquet"})

# The join layer follows its sources eagerly and the silos load daily; models retrain nightly.
JOIN_LAYER_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=26), warn_window=dt.timedelta(hours=24))
MODEL_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(days=3), warn_window=dt.timedelta(hours=26))


def silo_owner(silo: str) -> str:
    """The team that owns a silo's data (and answers for what is computed inside it)."""
    return f"team:{silo.replace('_', '-')}"


def governed_kinds(catalog: Catalog, deployment: str) -> set[str]:
    """The governed zone's engine in this deployment: a PostgreSQL schema, or a local lake read by DuckDB."""
    return {"postgres"} if catalog.governed_connections.get(deployment, {}).get("dsn") else {"duckdb"}


def ledger_kinds(deployment: str) -> set[str]:
    """The audit ledger is a DuckDB file locally and a PostgreSQL table in prod (FEDLAKE_LEDGER)."""
    return {"postgres"} if deployment == "prod" else {"duckdb"}


def _tags(spec: dg.AssetSpec, **extra: str) -> dict[str, str]:
    """The spec's own tags with extra ones; kinds travel as `dagster/kind/*` tags, set through `kinds` instead."""
    return {**{k: v for k, v in spec.tags.items() if not k.startswith(KIND_TAG_PREFIX)}, **extra}


def _spec_conventions(catalog: Catalog, deployment: str, spec: dg.AssetSpec) -> dg.AssetSpec:
    home = spec.key.path[0]
    if home in catalog.silos:
        silo = catalog.silo(home)
        return spec.replace_attributes(
            owners=[silo_owner(home)],
            tags=_tags(spec, silo=home, region=silo.region),
            kinds={*spec.kinds, silo.kind},
        )
    region = catalog.governed_region
    if spec.group_name == MODELS_GROUP:
        return spec.replace_attributes(owners=[ML_TEAM], tags=_tags(spec, region=region), freshness_policy=MODEL_FRESHNESS)
    if spec.group_name == MARTS_GROUP:
        # dbt builds the marts in the governed zone's engine (dbt-postgres in prod); the manifest,
        # parsed once with the local target, names dbt-duckdb's
        kinds = (set(spec.kinds) - _ZONE_ENGINES) | governed_kinds(catalog, deployment)
        return spec.replace_attributes(owners=[PLATFORM_TEAM], tags=_tags(spec, region=region), kinds=kinds)
    if home == "governed":
        is_ledger = spec.key.path[-1] == "audit_ledger"
        engine = ledger_kinds(deployment) if is_ledger else governed_kinds(catalog, deployment)
        changes: dict = {
            "owners": [PLATFORM_TEAM],
            "tags": _tags(spec, region=region),
            "kinds": (set(spec.kinds) - _ZONE_ENGINES) | engine,
        }
        if not is_ledger:
            changes["freshness_policy"] = JOIN_LAYER_FRESHNESS
        return spec.replace_attributes(**changes)
    return spec.replace_attributes(owners=[PLATFORM_TEAM])


def apply_conventions(
    assets: Iterable[dg.AssetsDefinition], catalog: Catalog, deployment: str
) -> Sequence[dg.AssetsDefinition]:
    """Every asset with its owners, its region tag, kinds true to the deployment, and freshness where it is promised."""
    return dg.map_asset_specs(lambda spec: _spec_conventions(catalog, deployment, spec), list(assets))
