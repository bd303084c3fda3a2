"""The Definitions load for each deployment and describe every silo table as a source asset."""

from __future__ import annotations

import dagster as dg

from platform_defs.definitions import build_definitions
from resources.silos import ParquetSiloResource, PostgresSiloResource, S3SiloResource
from tests.conftest import REPO


def all_specs(defs: dg.Definitions) -> dict[dg.AssetKey, dg.AssetSpec]:
    return {spec.key: spec for spec in defs.resolve_all_asset_specs()}


def test_every_silo_table_is_a_source_asset_with_kind_and_region(catalog, tmp_path):
    defs = build_definitions(REPO / "silos.yaml", "local", tmp_path)
    specs = all_specs(defs)
    for silo, spec in catalog.silos.items():
        for table in spec.tables:
            asset = specs[dg.AssetKey([silo, table])]
            assert spec.kind in asset.kinds
            assert asset.tags["region"] == spec.region
            assert asset.group_name == silo
        assert dg.AssetKey([silo, "monthly_spending"]) in specs
    monthly = specs[dg.AssetKey(["eu_core", "monthly_spending"])]
    assert {dep.asset_key for dep in monthly.deps} == {
        dg.AssetKey(["eu_core", "transactions"]),
        dg.AssetKey(["eu_core", "accounts"]),
    }


def test_resources_follow_the_deployment(tmp_path, monkeypatch):
    local = build_definitions(REPO / "silos.yaml", "local", tmp_path).resources
    assert isinstance(local["eu_core"], PostgresSiloResource) and local["eu_core"].embedded == "eu_core"
    assert isinstance(local["us_lake"], S3SiloResource) and local["us_lake"].path == "us_lake"
    assert isinstance(local["sg_lake"], ParquetSiloResource)

    prod = build_definitions(REPO / "silos.yaml", "prod", tmp_path).resources
    # in prod Dagster reaches each silo only through its agent, and never holds the silo's credentials
    assert prod["eu_core"].agent_location == dg.EnvVar("EU_CORE_AGENT")
    assert prod["us_lake"].agent_token == dg.EnvVar("FEDLAKE_TOKEN_COORDINATOR")
    assert prod["sg_lake"].agent_ca_cert == dg.EnvVar("FEDLAKE_AGENT_CA")
    assert prod["eu_core"].dsn == "" and prod["us_lake"].secret_access_key == ""
    assert prod["ledger"].location == dg.EnvVar("FEDLAKE_LEDGER")


def test_definitions_validate_from_the_workspace(tmp_path):
    import subprocess
    import sys
    import os

    env = {**os.environ, "FEDLAKE_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
