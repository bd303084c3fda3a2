"""Expectation suites as files next to silos.yaml, validated against the catalog when loaded.

`expectations/<table>.json` is shared by every silo that has that table; `expectations/<silo>/<table>.json`
replaces it for one silo. Each file is a Great Expectations 1.x suite (name, expectations with type
and kwargs). Loading checks every suite the way the catalog and the policy are checked: a suite for
a table no silo has, a kwarg naming a column the table does not declare, an expectation type GE
does not know, or kwargs GE rejects are errors naming the file and the key, so a typo cannot turn
into a check that silently never fails.

What a deployment declares is not written into a suite: a kwarg may be GE's suite parameter
`{"$PARAMETER": "currencies"}` (those silos.yaml gives an exchange rate) or `{"$PARAMETER":
"regions"}` (the regions it declares), resolved when the suite is loaded, so that a silo in a new
region passes its suites by being declared in silos.yaml alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlake.catalog import Catalog, load_catalog
from fedlake.errors import ConfigError

EXPECTATIONS_DIR = "expectations"
SUITE_KEYS = {"name", "expectations", "meta", "notes", "id", "suite_parameters"}
EXPECTATION_KEYS = {"type", "kwargs", "meta", "notes", "description", "id"}
# GE kwargs that name one column, or several.
COLUMN_KWARGS = ("column", "column_A", "column_B")
COLUMN_LIST_KWARGS = ("column_list", "column_set")
# The position of an expectation in its file, carried in GE's meta so results map back to it.
INDEX_META = "fedlake_index"
# GE's notation for a suite parameter, whose value fedlake takes from silos.yaml (deployment_parameters).
PARAMETER_KEY = "$PARAMETER"


@dataclass(frozen=True)
class Expectation:
    """One expectation as declared in its file."""

    type: str
    kwargs: dict[str, Any]
    description: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    notes: Any = None

    def columns(self) -> list[str]:
        """The columns this expectation reads, in the order its kwargs name them."""
        named = [self.kwargs[k] for k in COLUMN_KWARGS if isinstance(self.kwargs.get(k), str)]
        for k in COLUMN_LIST_KWARGS:
            if isinstance(self.kwargs.get(k), list):
                named.extend(c for c in self.kwargs[k] if isinstance(c, str))
        return list(dict.fromkeys(named))

    def label(self) -> str:
        columns = self.columns()
        return f"{self.type}({', '.join(columns)})" if columns else self.type


@dataclass(frozen=True)
class Suite:
    """The suite that applies to one table: where it was declared and what it expects."""

    name: str
    table: str
    path: str
    expectations: tuple[Expectation, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def columns(self) -> list[str]:
        return list(dict.fromkeys(c for e in self.expectations for c in e.columns()))

    def labels(self) -> list[str]:
        """Each expectation's label, as results name it; where two share one (same type and columns),
        each also names its place in the suite file, so a result says which of them failed."""
        labels = [e.label() for e in self.expectations]
        return [f"{label} [expectations[{i}]]" if labels.count(label) > 1 else label for i, label in enumerate(labels)]

    def to_gx(self):
        """A fresh GE ExpectationSuite (GE binds suites to a context, so each validation gets its own),
        each expectation tagged with its position in the file."""
        from fedlake.quality._gx import gx_expectation, gx_module

        gx = gx_module()
        return gx.ExpectationSuite(
            name=self.name,
            expectations=[gx_expectation(e, i) for i, e in enumerate(self.expectations)],
            meta=dict(self.meta),
        )


@dataclass(frozen=True)
class QualitySuites:
    """Every suite of a deployment, resolved per silo: the override if there is one, else the shared file."""

    directory: str
    suites: dict[tuple[str, str], Suite]  # (silo, table) -> suite

    def for_table(self, silo: str, table: str) -> Suite | None:
        return self.suites.get((silo, table))

    def tables(self, silo: str) -> list[str]:
        return [table for (s, table) in self.suites if s == silo]

    def __len__(self) -> int:
        return len(self.suites)


def deployment_parameters(catalog: Catalog) -> dict[str, list[str]]:
    """The suite parameters a deployment declares: the currencies it has exchange rates for (those the
    join layer converts, every region's among them) and its regions."""
    return {"currencies": sorted(catalog.money.rates_to_eur), "regions": sorted(catalog.money.regions)}


def load_suites(silos_yaml_path: str | os.PathLike, catalog: Catalog | None = None) -> QualitySuites:
    """Load expectations/ next to silos.yaml; every problem is a ConfigError naming the file and the key.
    A deployment without an expectations/ folder has no suites."""
    silos_yaml_path = Path(silos_yaml_path)
    catalog = catalog or load_catalog(silos_yaml_path)
    directory = silos_yaml_path.parent / EXPECTATIONS_DIR
    if not directory.is_dir():
        return QualitySuites(str(directory), {})

    shared: dict[str, Suite] = {}
    overrides: dict[tuple[str, str], Suite] = {}
    tables_anywhere = sorted({t for spec in catalog.silos.values() for t in spec.tables})
    parameters = _Parameters(catalog)
    for entry in sorted(directory.iterdir()):
        if _ignored(entry):
            continue
        if entry.is_dir():
            if entry.name not in catalog.silos:
                raise ConfigError(
                    str(entry), "<folder>", f"no silo named '{entry.name}' in {catalog.path} (silos: {', '.join(catalog.silos)})"
                )
            spec = catalog.silo(entry.name)
            for file in sorted(entry.iterdir()):
                if _ignored(file):
                    continue
                table = _table_of(file, sorted(spec.tables), f"silo {spec.name}")
                overrides[(spec.name, table)] = _parse_suite(file, table, [spec.tables[table].columns], parameters)
            continue
        table = _table_of(entry, tables_anywhere, "any silo")
        users = [spec for spec in catalog.silos.values() if table in spec.tables]
        shared[table] = _parse_suite(entry, table, [spec.tables[table].columns for spec in users], parameters)

    suites: dict[tuple[str, str], Suite] = {}
    for name, spec in catalog.silos.items():
        for table in spec.tables:
            suite = overrides.get((name, table)) or shared.get(table)
            if suite is not None:
                suites[(name, table)] = suite
    return QualitySuites(str(directory), suites)


class _Parameters:
    """Resolves `{"$PARAMETER": name}` kwargs to what silos.yaml declares."""

    def __init__(self, catalog: Catalog):
        self.catalog, self.values = catalog, deployment_parameters(catalog)

    def resolve(self, value: Any, where: str, key: str) -> Any:
        if not (isinstance(value, dict) and PARAMETER_KEY in value):
            return value
        name = value[PARAMETER_KEY]
        if len(value) != 1 or not isinstance(name, str) or name not in self.values:
            raise ConfigError(where, key, f"unknown suite parameter {str(name)[:40]!r} (known: {', '.join(self.values)})")
        if not self.values[name]:
            raise ConfigError(where, key, f"suite parameter '{name}' comes from {self.catalog.path}, which declares no regions")
        return list(self.values[name])


def _ignored(path: Path) -> bool:
    """Dotfiles and notes (README.md) may sit next to the suites."""
    return path.name.startswith(".") or path.suffix.lower() in (".md", ".txt")


def _table_of(path: Path, known: list[str], where: str) -> str:
    if path.is_dir() or path.suffix != ".json":
        raise ConfigError(str(path), "<file>", "expected <table>.json (or a folder named after a silo)")
    if path.stem not in known:
        raise ConfigError(
            str(path), "<file>", f"a suite for unknown table '{path.stem}': no such table in {where} (tables: {', '.join(known)})"
        )
    return path.stem


def _parse_suite(path: Path, table: str, column_sets: list[dict[str, str]], parameters: _Parameters) -> Suite:
    where = str(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(where, f"line {exc.lineno}", f"not valid JSON: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise ConfigError(where, "<file>", "expected a JSON object with name and expectations")
    unknown = sorted(set(raw) - SUITE_KEYS)
    if unknown:
        raise ConfigError(where, unknown[0], f"unknown key (allowed: {', '.join(sorted(SUITE_KEYS))})")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(where, "name", "a suite needs a non-empty name")
    meta = raw.get("meta") or {}
    if not isinstance(meta, dict):
        raise ConfigError(where, "meta", "expected an object")
    items = raw.get("expectations")
    if not isinstance(items, list) or not items:
        raise ConfigError(where, "expectations", "expected a non-empty list of {type, kwargs}")
    expectations = tuple(
        _parse_expectation(where, f"expectations[{i}]", item, column_sets, parameters) for i, item in enumerate(items)
    )
    for i, expectation in enumerate(expectations):
        _check_with_gx(where, f"expectations[{i}]", expectation)
    return Suite(name=name, table=table, path=where, expectations=expectations, meta=meta)


def _parse_expectation(
    where: str, key: str, item: Any, column_sets: list[dict[str, str]], parameters: _Parameters
) -> Expectation:
    if not isinstance(item, dict):
        raise ConfigError(where, key, "expected an object with type and kwargs")
    unknown = sorted(set(item) - EXPECTATION_KEYS)
    if unknown:
        raise ConfigError(where, f"{key}.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(EXPECTATION_KEYS))})")
    type_ = item.get("type")
    if not isinstance(type_, str) or not type_:
        raise ConfigError(where, f"{key}.type", "expected the expectation's type, e.g. expect_column_values_to_not_be_null")
    kwargs = item.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ConfigError(where, f"{key}.kwargs", "expected an object")
    kwargs = {name: parameters.resolve(value, where, f"{key}.kwargs.{name}") for name, value in kwargs.items()}
    meta = item.get("meta") or {}
    if not isinstance(meta, dict):
        raise ConfigError(where, f"{key}.meta", "expected an object")
    if INDEX_META in meta:
        raise ConfigError(where, f"{key}.meta.{INDEX_META}", "reserved: fedlake uses it to map results back to the file")
    for kwarg in COLUMN_KWARGS + COLUMN_LIST_KWARGS:
        if kwarg not in kwargs:
            continue
        value = kwargs[kwarg]
        names = value if kwarg in COLUMN_LIST_KWARGS else [value]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(where, f"{key}.kwargs.{kwarg}", "expected a column name" if kwarg in COLUMN_KWARGS else "expected a list of column names")
        for name in names:
            for columns in column_sets:
                if name not in columns:
                    raise ConfigError(
                        where,
                        f"{key}.kwargs.{kwarg}",
                        f"unknown column '{name}' (the table declares: {', '.join(columns)})",
                    )
    description = item.get("description")
    if description is not None and not isinstance(description, str):
        raise ConfigError(where, f"{key}.description", "expected a string")
    return Expectation(type=type_, kwargs=kwargs, description=description, meta=meta, notes=item.get("notes"))


def _check_with_gx(where: str, key: str, expectation: Expectation) -> None:
    """Let GE itself judge the type and the kwargs, now rather than at the first run."""
    from fedlake.quality._gx import gx_expectation, gx_module

    gx_module()
    from great_expectations.compatibility.pydantic import ValidationError
    from great_expectations.exceptions import ExpectationNotFoundError, InvalidExpectationConfigurationError

    try:
        gx_expectation(expectation, 0)
    except ExpectationNotFoundError:
        raise ConfigError(where, f"{key}.type", f"Great Expectations has no expectation '{expectation.type}'") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field_name = ".".join(str(p) for p in first["loc"] if p != "__root__")
        raise ConfigError(
            where, f"{key}.kwargs" + (f".{field_name}" if field_name else ""), f"{first['msg']} ({expectation.type})"
        ) from None
    except InvalidExpectationConfigurationError as exc:
        raise ConfigError(where, f"{key}.kwargs", f"{exc} ({expectation.type})") from None
