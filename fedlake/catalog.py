"""The catalog: silos, their tables and the classification of every column, from silos.yaml.

The catalog is declarative and validated at load, so that a typo in a classification or a kind is
an error naming the file and the key, not a silent hole in the policy later on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedlake.errors import ConfigError
from fedlake.regions import Money, parse_money

KINDS = ("postgres", "s3", "parquet")
CLASSIFICATIONS = ("public", "financial", "pii.quasi", "pii.direct", "free_text")
DEPLOYMENTS = ("local", "prod")

# Which connection keys each kind accepts per deployment; anything else is a typo worth reporting.
# postgres: `dsn` is the agent's read-only role, `writer_dsn` the role that materializes into
# `writer_schema`, `owner_dsn` the data owner's (seeding, role set-up); `embedded` derives all three.
CONNECTION_KEYS = {
    "postgres": {"dsn", "writer_dsn", "owner_dsn", "writer_schema", "embedded", "schema", "engine"},
    "s3": {"bucket", "prefix", "endpoint_url", "region", "access_key_id", "secret_access_key", "path", "engine", "spark_master"},
    "parquet": {"path", "engine", "spark_master"},
}
# Where the coordinator reaches a silo's agent in a deployment; without one the agent runs in-process.
AGENT_KEYS = {"location"}
# The governed zone: a PostgreSQL database (dsn) or a Parquet lake (path).
GOVERNED_KEYS = {"dsn", "schema", "path"}
# Settings whose value is one of a few words.
SETTING_VALUES = {"engine": ("duckdb", "postgres", "spark")}
# The engines that run each kind's fragments: a lake's may run on Spark, whose master each
# deployment names (spark_master): local[N], a standalone cluster, or a Spark Connect server.
ENGINES = {"postgres": ("duckdb", "postgres"), "s3": ("duckdb", "spark"), "parquet": ("duckdb", "spark")}
SPARK_MASTER = re.compile(r"local(\[(\d+|\*)\])?|spark://[^\s/]+(/.*)?|sc://[^\s/]+(/.*)?")
# A lake's tables: how each source table is stored (Delta unless declared), how long old versions last.
TABLE_FORMATS = ("delta", "parquet")
LAKE_KEYS = ("formats", "retention_hours")


@dataclass(frozen=True)
class EnvRef:
    """A connection value read from the environment when the silo is opened, never stored."""

    name: str

    def resolve(self, where: str) -> str:
        value = os.environ.get(self.name)
        if value is None:
            raise ConfigError(where, self.name, f"environment variable {self.name} is not set")
        return value


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: dict[str, str]  # column -> classification, in declaration order

    def classification(self, column: str) -> str:
        return self.columns[column]


@dataclass(frozen=True)
class LakeSpec:
    """A lake silo's storage: source tables declared `parquet` are plain Parquet folders another tool
    writes, every other table is a Delta table; versions older than `retention_hours` are vacuumed."""

    formats: dict[str, str] = field(default_factory=dict)  # table -> delta | parquet
    retention_hours: int = 168


@dataclass(frozen=True)
class SiloSpec:
    name: str
    kind: str
    region: str
    tables: dict[str, TableSpec]
    connections: dict[str, dict[str, str | EnvRef]] = field(default_factory=dict)
    agents: dict[str, dict[str, str | EnvRef]] = field(default_factory=dict)  # deployment -> {location}
    lake: LakeSpec = field(default_factory=LakeSpec)  # lake kinds only
    source_file: str = "silos.yaml"

    def connection(self, deployment: str) -> dict[str, str | EnvRef]:
        if deployment not in self.connections:
            raise ConfigError(
                self.source_file,
                f"silos.{self.name}.connection",
                f"no connection for deployment '{deployment}' (have: {sorted(self.connections)})",
            )
        return self.connections[deployment]


@dataclass(frozen=True)
class Catalog:
    silos: dict[str, SiloSpec]
    path: str
    governed_region: str = "EU"  # where the governed zone (and so the coordinator's results) lives
    governed_connections: dict[str, dict[str, str | EnvRef]] = field(default_factory=dict)
    money: Money = field(default_factory=lambda: Money(regions={}, rates_to_eur={}))  # regions:, exchange_rates_to_eur:

    def silo(self, name: str) -> SiloSpec:
        if name not in self.silos:
            raise KeyError(f"unknown silo '{name}' (known: {', '.join(sorted(self.silos))})")
        return self.silos[name]

    def table(self, silo: str, table: str) -> TableSpec:
        spec = self.silo(silo)
        if table not in spec.tables:
            raise KeyError(f"unknown table '{silo}.{table}' (known: {', '.join(sorted(spec.tables))})")
        return spec.tables[table]


def read_yaml(path: str) -> Any:
    """A declarative file's content; a missing file or bad YAML is a ConfigError naming the line."""
    try:
        with open(path) as f:
            return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError:
        raise ConfigError(path, "<file>", "file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "<file>"
        raise ConfigError(path, where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None


def load_catalog(path: str | os.PathLike) -> Catalog:
    """Parse and validate silos.yaml; every problem is a ConfigError naming the file and the key."""
    path = str(path)
    return parse_catalog(read_yaml(path), path)


def parse_catalog(raw: Any, path: str = "silos.yaml") -> Catalog:
    if not isinstance(raw, dict) or not isinstance(raw.get("silos"), dict) or not raw["silos"]:
        raise ConfigError(path, "silos", "expected a mapping of silo name to silo definition")
    top_keys = {"silos", "governed_zone", "regions", "exchange_rates_to_eur"}
    unknown_top = set(raw) - top_keys - {k for k in raw if str(k).startswith("x-")}
    if unknown_top:
        allowed = "silos, governed_zone, regions, exchange_rates_to_eur, x-*"
        raise ConfigError(path, sorted(unknown_top)[0], f"unknown top-level key (allowed: {allowed})")
    silos = {}
    for name, body in raw["silos"].items():
        silos[name] = _parse_silo(path, str(name), body)
    money = parse_money(path, raw.get("regions"), raw.get("exchange_rates_to_eur"))
    for name, spec in silos.items():
        if money.regions and spec.region not in money.regions:
            raise ConfigError(path, f"silos.{name}.region", f"region {spec.region!r} is not declared under regions")
    governed = raw.get("governed_zone") or {}
    regions = sorted({s.region for s in silos.values()})
    if not isinstance(governed, dict) or governed.get("region", "EU") not in regions:
        raise ConfigError(path, "governed_zone.region", f"expected one of the silos' regions ({', '.join(regions)})")
    unknown = set(governed) - {"region", "connection"}
    if unknown:
        raise ConfigError(path, f"governed_zone.{sorted(unknown)[0]}", "unknown key (allowed: region, connection)")
    governed_connections = _parse_connections(
        path, "governed_zone.connection", governed.get("connection", {}), GOVERNED_KEYS, "the governed zone"
    )
    return Catalog(
        silos=silos, path=path, governed_region=governed.get("region", "EU"), governed_connections=governed_connections,
        money=money,
    )


def _parse_silo(path: str, name: str, body: Any) -> SiloSpec:
    key = f"silos.{name}"
    if not name.isidentifier():
        raise ConfigError(path, key, "a silo name must be an identifier (letters, digits, underscore)")
    if not isinstance(body, dict):
        raise ConfigError(path, key, "expected a mapping with kind, region, connection and tables")
    unknown = set(body) - {"kind", "region", "connection", "agent", "tables", "lake"}
    if unknown:
        raise ConfigError(path, f"{key}.{sorted(unknown)[0]}", "unknown key (allowed: kind, region, connection, agent, tables, lake)")
    kind = body.get("kind")
    if kind not in KINDS:
        raise ConfigError(path, f"{key}.kind", f"unknown kind {kind!r} (allowed: {', '.join(KINDS)})")
    region = body.get("region")
    if not isinstance(region, str) or not region:
        raise ConfigError(path, f"{key}.region", "a region (e.g. EU, US, SG) is required")
    tables_raw = body.get("tables")
    if not isinstance(tables_raw, dict) or not tables_raw:
        raise ConfigError(path, f"{key}.tables", "expected a mapping of table name to its columns")
    tables = {}
    for table, columns in tables_raw.items():
        tables[str(table)] = _parse_table(path, f"{key}.tables.{table}", str(table), columns)
    connections = _parse_connections(path, f"{key}.connection", body.get("connection", {}), CONNECTION_KEYS[kind], f"kind {kind}")
    if kind == "postgres":
        for deployment, settings in connections.items():
            _check_postgres_roles(path, f"{key}.connection.{deployment}", settings)
    for deployment, settings in connections.items():
        _check_engine(path, f"{key}.connection.{deployment}", kind, settings)
    agents = _parse_connections(path, f"{key}.agent", body.get("agent", {}), AGENT_KEYS, "an agent")
    lake = _parse_lake(path, f"{key}.lake", body["lake"], kind, tables) if "lake" in body else LakeSpec()
    return SiloSpec(
        name=name, kind=kind, region=region, tables=tables, connections=connections, agents=agents, lake=lake, source_file=path
    )


def _parse_lake(path: str, key: str, raw: Any, kind: str, tables: dict[str, TableSpec]) -> LakeSpec:
    if kind == "postgres":
        raise ConfigError(path, key, "only a lake silo (kind s3 or parquet) has lake settings")
    if not isinstance(raw, dict) or set(raw) - set(LAKE_KEYS):
        raise ConfigError(path, key, f"expected a mapping with {' and/or '.join(LAKE_KEYS)}")
    formats = raw.get("formats") or {}
    if not isinstance(formats, dict):
        raise ConfigError(path, f"{key}.formats", "expected a mapping of source table to its format (delta or parquet)")
    for table, table_format in formats.items():
        if table not in tables:
            raise ConfigError(path, f"{key}.formats.{table}", f"not a table of this silo (tables: {', '.join(tables)})")
        if table_format not in TABLE_FORMATS:
            raise ConfigError(path, f"{key}.formats.{table}", f"unknown format {table_format!r} (allowed: {', '.join(TABLE_FORMATS)})")
    retention = raw.get("retention_hours", LakeSpec.retention_hours)
    if not isinstance(retention, int) or isinstance(retention, bool) or retention < 0:
        raise ConfigError(path, f"{key}.retention_hours", f"expected a whole number of hours, 0 or more, not {retention!r}")
    return LakeSpec(formats={str(t): f for t, f in formats.items()}, retention_hours=retention)


def _check_engine(path: str, key: str, kind: str, settings: dict[str, str | EnvRef]) -> None:
    engine, master = settings.get("engine", "duckdb"), settings.get("spark_master")
    if isinstance(engine, str) and engine not in ENGINES[kind]:
        raise ConfigError(path, f"{key}.engine", f"expected one of {', '.join(ENGINES[kind])}, not '{engine}' (a {kind} silo's engines)")
    if engine == "spark" and master is None:
        raise ConfigError(path, f"{key}.spark_master", "required with engine: spark (local[2], spark://host:7077 or sc://host:15002)")
    if master is not None and engine != "spark":
        raise ConfigError(path, f"{key}.spark_master", "only for engine: spark")
    if isinstance(master, str) and not SPARK_MASTER.fullmatch(master):
        raise ConfigError(path, f"{key}.spark_master", f"expected local[N], spark://host:port or sc://host:port, not {master!r}")


def _check_postgres_roles(path: str, key: str, settings: dict[str, str | EnvRef]) -> None:
    """A postgres silo reads and writes as two roles: an embedded server derives them, a DSN names both."""
    if "embedded" in settings:
        for setting in ("dsn", "writer_dsn", "owner_dsn"):
            if setting in settings:
                raise ConfigError(path, f"{key}.{setting}", "an embedded silo derives its roles' DSNs; drop this key or embedded")
    elif "dsn" in settings and "writer_dsn" not in settings:
        raise ConfigError(path, f"{key}.writer_dsn", "required beside dsn: the read-only dsn cannot materialize")
    elif "dsn" not in settings and ("writer_dsn" in settings or "owner_dsn" in settings):
        raise ConfigError(path, f"{key}.dsn", "required: the agent's read-only DSN")
    if settings.get("writer_schema", "fedlake_made") == settings.get("schema", "public"):
        raise ConfigError(path, f"{key}.writer_schema", "must differ from schema: made tables live apart from the source")


def _parse_table(path: str, key: str, name: str, columns: Any) -> TableSpec:
    if not name.isidentifier():
        raise ConfigError(path, key, "a table name must be an identifier")
    if not isinstance(columns, dict) or not columns:
        raise ConfigError(path, key, "expected a mapping of column name to classification")
    parsed = {}
    for column, classification in columns.items():
        if classification not in CLASSIFICATIONS:
            raise ConfigError(
                path,
                f"{key}.{column}",
                f"unknown classification {classification!r} (allowed: {', '.join(CLASSIFICATIONS)})",
            )
        parsed[str(column)] = classification
    return TableSpec(name=name, columns=parsed)


def _parse_connections(path: str, key: str, raw: Any, allowed: set[str], what: str) -> dict[str, dict[str, str | EnvRef]]:
    if not isinstance(raw, dict):
        raise ConfigError(path, key, "expected a mapping of deployment (local, prod) to connection settings")
    result = {}
    for deployment, settings in raw.items():
        dkey = f"{key}.{deployment}"
        if deployment not in DEPLOYMENTS:
            raise ConfigError(path, dkey, f"unknown deployment (allowed: {', '.join(DEPLOYMENTS)})")
        if not isinstance(settings, dict):
            raise ConfigError(path, dkey, "expected a mapping of connection settings")
        parsed: dict[str, str | EnvRef] = {}
        for setting, value in settings.items():
            skey = f"{dkey}.{setting}"
            if setting not in allowed:
                raise ConfigError(path, skey, f"unknown setting for {what} (allowed: {', '.join(sorted(allowed))})")
            if isinstance(value, dict):
                if set(value) != {"env"} or not isinstance(value["env"], str):
                    raise ConfigError(path, skey, "expected a plain value or {env: VARIABLE_NAME}")
                parsed[setting] = EnvRef(value["env"])
            elif isinstance(value, (str, int, bool)):
                if setting in SETTING_VALUES and str(value) not in SETTING_VALUES[setting]:
                    raise ConfigError(path, skey, f"expected one of {', '.join(SETTING_VALUES[setting])}, not '{value}'")
                parsed[setting] = str(value)
            else:
                raise ConfigError(path, skey, "expected a plain value or {env: VARIABLE_NAME}")
        result[deployment] = parsed
    return result


def default_catalog_path() -> Path:
    """silos.yaml named by FEDLAKE_SILOS, else the one in the working directory."""
    return Path(os.environ.get("FEDLAKE_SILOS", "silos.yaml"))
