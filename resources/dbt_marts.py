"""The dbt CLI for one fedlake deployment: where the marts are built, and from which governed zone.

Locally the governed zone is a lake of Delta tables and dbt-duckdb builds the marts in a DuckDB
file beside it (dbt target `local`). In prod the governed zone is a PostgreSQL schema and
dbt-postgres builds the marts in that same database (target `prod`), next to the tables they read.

The prod DSN is a secret: Dagster keeps only the name of its environment variable and reads it
through `dg.EnvVar` when dbt runs. dbt-postgres takes connection fields, not a DSN, so the DSN is
split with psycopg and handed to the dbt process in libpq's own environment variables (PGHOST,
PGPORT, PGUSER, PGDATABASE, PGSSLMODE...), the password in one that dbt scrubs from its logs
(DBT_ENV_SECRET_*). Nothing is written to disk or passed on a command line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import psycopg
from dagster_dbt import DbtCliInvocation, DbtCliResource
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict

from fedlake.errors import ConfigError

MARTS_DATABASE = Path("governed", "dbt_marts.duckdb")  # local: under the data folder, next to the governed zone
PASSWORD_ENV = "DBT_ENV_SECRET_FEDLAKE_GOVERNED_PASSWORD"  # read by dbt_project/profiles.yml, target prod
# dbt-postgres requires these connection fields; profiles.yml reads them from libpq's variables
REQUIRED_DSN_FIELDS = ("host", "user", "dbname")


def libpq_environment(dsn: str, where: tuple[str, str]) -> dict[str, str]:
    """The DSN as libpq environment variables for the dbt process (the password apart, under
    PASSWORD_ENV). `where` is (file, key) naming the DSN's setting, for the error message."""
    try:
        settings = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise ConfigError(*where, "the governed PostgreSQL DSN does not parse as a libpq connection string or URI") from None
    missing = [field for field in REQUIRED_DSN_FIELDS if not settings.get(field)]
    if missing:
        raise ConfigError(*where, f"the governed PostgreSQL DSN must name {', '.join(missing)} (dbt-postgres needs them)")
    env_names = {o.keyword.decode(): (o.envvar or b"").decode() for o in pq.Conninfo.get_defaults()}
    password = str(settings.pop("password", "") or "")
    unsupported = sorted(keyword for keyword in settings if not env_names.get(keyword))
    if unsupported:
        raise ConfigError(*where, f"DSN parameter(s) {', '.join(unsupported)} have no libpq environment variable to reach dbt; remove them")
    settings.setdefault("port", "5432")
    if not str(settings["port"]).isdigit():
        raise ConfigError(*where, f"the governed PostgreSQL DSN's port must be one number (dbt-postgres takes one), got {settings['port']!r}")
    return {**{env_names[keyword]: str(value) for keyword, value in settings.items()}, PASSWORD_ENV: password}


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for what runs inside, and put back what was there after.

    dagster-dbt starts dbt with a copy of this process's environment and offers no other way in;
    the values are set only while the dbt process is being started.
    """
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class FedlakeDbtResource(DbtCliResource):
    """The dbt CLI for one fedlake deployment.

    It tells dbt, as --vars, which data folder and governed zone to use (the home Dagster was given,
    which need not be $FEDLAKE_HOME), keeps dbt's run artifacts under that data folder rather than
    in the source tree, and in prod gives dbt the governed database's connection.
    """

    fedlake_home: str
    governed_zone: str = ""  # local: the governed Parquet lake's folder
    governed_dsn_env: str = ""  # prod: the environment variable holding the governed PostgreSQL DSN
    governed_schema: str = "governed"
    config_source: str = ""  # the silos.yaml the settings come from, and the DSN's key there: named in errors
    config_key: str = "governed_zone.connection.prod.dsn"

    def marts_database(self) -> Path:
        return Path(self.fedlake_home) / MARTS_DATABASE

    def is_postgres(self) -> bool:
        return bool(self.governed_dsn_env)

    def governed_dsn(self) -> str:
        """The governed PostgreSQL DSN, read from its environment variable now; one line if unset."""
        dsn = dg.EnvVar(self.governed_dsn_env).get_value()
        if not dsn:
            raise ConfigError(
                self.config_source,
                self.config_key,
                f"environment variable {self.governed_dsn_env} is not set: export the governed PostgreSQL DSN "
                "(postgresql://user:password@host:port/dbname) where Dagster runs",
            )
        return dsn

    def dbt_vars(self) -> dict[str, str]:
        found = {
            "fedlake_home": self.fedlake_home,
            "marts_database": "" if self.is_postgres() else str(self.marts_database()),
            "governed_zone": self.governed_zone,
            "governed_schema": self.governed_schema,
        }
        return {name: value for name, value in found.items() if value}

    def run_target_path(self) -> Path:
        return Path(self.fedlake_home) / "dbt" / "target"

    def cli(self, args: Sequence[str], *, target_path: Path | None = None, **kwargs: Any) -> DbtCliInvocation:
        if any(arg == "--vars" or arg.startswith("--vars=") for arg in args):
            raise ValueError(
                "FedlakeDbtResource passes --vars itself (the data folder and the governed zone); "
                "set other dbt vars in dbt_project/dbt_project.yml"
            )
        connection: dict[str, str] = {}
        if self.is_postgres():
            where = (self.config_source, f"{self.config_key} ({self.governed_dsn_env})")
            connection = libpq_environment(self.governed_dsn(), where)
        else:
            self.marts_database().parent.mkdir(parents=True, exist_ok=True)
        with _environment(connection):
            return super().cli(
                [*args, "--vars", json.dumps(self.dbt_vars())],
                target_path=target_path or self.run_target_path(),
                **kwargs,
            )

    def row_counts(self, relations: Mapping[str, tuple[str, str]]) -> dict[str, int]:
        """Rows in each built relation, {name: (schema, table)}, read once dbt has exited (dbt holds
        the local DuckDB file open for writing while it runs)."""
        if not relations:
            return {}
        if self.is_postgres():
            with psycopg.connect(self.governed_dsn()) as conn:
                return {
                    name: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()[0]
                    for name, (schema, table) in relations.items()
                }
        if not self.marts_database().exists():
            return {}
        with duckdb.connect(str(self.marts_database()), read_only=True) as db:
            return {
                name: db.execute(f"SELECT count(*) FROM {_quote(schema)}.{_quote(table)}").fetchone()[0]
                for name, (schema, table) in relations.items()
            }


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
