"""Every asset check of a deployment: in place on the sources (PII, expectation suites), on what
fedlake derives (row-count reconciliation, schema contracts, PII in the governed zone), on the
audit ledger's chains, and the models' promotion gates."""

from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from assets.audit import hash_chain_intact
from assets.models import model_checks
from assets.pii_checks import governed_pii_checks, pii_checks
from assets.quality_checks import quality_checks
from assets.reconciliation_checks import reconciliation_checks
from assets.schema_contracts import schema_contract_checks
from fedlake.catalog import Catalog
from fedlake.quality import load_suites


def all_checks(
    catalog: Catalog,
    catalog_path: Path,
    in_silo: Sequence[dg.AssetsDefinition],
    daily: Sequence[dg.AssetsDefinition],
    governed: Sequence[dg.AssetsDefinition],
) -> list[dg.AssetChecksDefinition]:
    derived = [key for assets_def in (*in_silo, *governed) for key in assets_def.keys]
    return [
        *pii_checks(catalog),
        governed_pii_checks(catalog, [key for assets_def in governed for key in assets_def.keys]),
        *reconciliation_checks(catalog, governed, in_silo, daily),
        *schema_contract_checks(catalog, derived),
        *quality_checks(catalog, load_suites(catalog_path, catalog)),
        hash_chain_intact,
        *model_checks(catalog),
    ]
