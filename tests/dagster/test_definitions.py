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


def test_dg_check_defs_loads_the_project(tmp_path):
    """`dg check defs` (Dagster's dg CLI, configured in pyproject.toml's [tool.dg]) loads and validates
    the definitions, as `dg dev` will; it supersedes `dagster definitions validate`."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "FEDLAKE_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path), "VIRTUAL_ENV": str(Path(sys.executable).parent.parent)}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("dg")), "check", "defs"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr
