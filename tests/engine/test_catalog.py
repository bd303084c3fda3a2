"""silos.yaml: the shipped one loads, and every malformed one is refused naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fedlake.catalog import CLASSIFICATIONS, load_catalog
from fedlake.errors import ConfigError
from fedlake.silos import open_silo

REPO = Path(__file__).resolve().parents[2]


def shipped() -> dict:
    """The shipped silos.yaml as plain data, with its YAML anchors unshared so edits stay local."""
    return json.loads(json.dumps(yaml.safe_load((REPO / "silos.yaml").read_text())))


def write(tmp_path: Path, raw: dict | str) -> Path:
    path = tmp_path / "silos.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def test_shipped_catalog_describes_three_silos_in_three_regions():
    catalog = load_catalog(REPO / "silos.yaml")
    assert {(s.name, s.kind, s.region) for s in catalog.silos.values()} == {
        ("eu_core", "postgres", "EU"),
        ("us_lake", "s3", "US"),
        ("sg_lake", "parquet", "SG"),
    }
    assert "loans" in catalog.silo("eu_core").tables
    for spec in catalog.silos.values():
        for table in spec.tables.values():
            assert set(table.columns.values()) <= set(CLASSIFICATIONS)
    assert catalog.table("us_lake", "transactions").classification("memo") == "free_text"
    assert catalog.table("sg_lake", "customers").classification("national_id") == "pii.direct"


@pytest.mark.parametrize(
    "mutate, key, says",
    [
        (lambda r: r["silos"]["eu_core"].update(kind="oracle"), "silos.eu_core.kind", "unknown kind 'oracle'"),
        (
            lambda r: r["silos"]["us_lake"]["tables"]["customers"].update(email="secret"),
            "silos.us_lake.tables.customers.email",
            "unknown classification 'secret'",
        ),
        (lambda r: r["silos"]["sg_lake"].pop("region"), "silos.sg_lake.region", "region"),
        (lambda r: r["silos"]["sg_lake"].update(tables={}), "silos.sg_lake.tables", "mapping of table name"),
        (lambda r: r["silos"]["sg_lake"].update(colour="blue"), "silos.sg_lake.colour", "unknown key"),
        (
            lambda r: r["silos"]["eu_core"]["connection"]["prod"].update(password="hunter2"),
            "silos.eu_core.connection.prod.password",
            "unknown setting for kind postgres",
        ),
        (
            lambda r: r["silos"]["eu_core"]["connection"]["prod"].update(engine="spark"),
            "silos.eu_core.connection.prod.engine",
            "expected one of duckdb, postgres, not 'spark'",
        ),
        (
            lambda r: r["silos"]["eu_core"]["connection"].update(staging={"dsn": "x"}),
            "silos.eu_core.connection.staging",
            "unknown deployment",
        ),
        (
            lambda r: r["silos"]["us_lake"]["connection"]["prod"].update(bucket={"vault": "x"}),
            "silos.us_lake.connection.prod.bucket",
            "{env: VARIABLE_NAME}",
        ),
        (lambda r: r["silos"]["us_lake"]["tables"].update({"bad-name": {"a": "public"}}), "silos.us_lake.tables.bad-name", "identifier"),
        (lambda r: r.update(sillos={}), "sillos", "unknown top-level key"),
    ],
)
def test_malformed_catalog_names_file_and_key(tmp_path, mutate, key, says):
    raw = shipped()
    mutate(raw)
    path = write(tmp_path, raw)
    with pytest.raises(ConfigError) as err:
        load_catalog(path)
    assert err.value.path == str(path)
    assert err.value.key == key
    assert says in str(err.value)
    assert str(path) in str(err.value) and key in str(err.value)


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "silos:\n  eu_core:\n    kind: postgres\n   region: [EU\n")
    with pytest.raises(ConfigError, match=r"line \d+: not valid YAML"):
        load_catalog(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_catalog(tmp_path / "nope.yaml")


def test_unset_secret_names_the_variable_and_the_silo(monkeypatch):
    catalog = load_catalog(REPO / "silos.yaml")
    monkeypatch.delenv("EU_CORE_DSN", raising=False)
    with pytest.raises(ConfigError, match=r"silos.eu_core.connection.prod.*EU_CORE_DSN is not set"):
        open_silo(catalog.silo("eu_core"), "prod")
