"""policies.yaml: loaded, validated against the catalog, and asked for one column's decision.

Validation happens at load so that an unknown silo, table, column, classification or purpose is an
error naming the file and the key, not a rule that silently never matches.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlake.catalog import CLASSIFICATIONS, Catalog, read_yaml
from fedlake.errors import ConfigError
from fedlake.policy.training import TrainingPolicy, parse_training

ACTIONS = ("allow", "pseudonymize", "generalize", "aggregate", "deny")
GENERALIZE_METHODS = ("age_band", "prefix")
RULE_KEYS = {"to", "from", "purposes", "action"}


@dataclass(frozen=True)
class Rule:
    where: str  # the key of this rule in the file, quoted in every decision it makes
    action: str
    to: tuple[str, ...] | str | None = None  # regions, or "same_region" / "other_region"
    from_: tuple[str, ...] | None = None
    purposes: tuple[str, ...] | None = None

    def matches(self, source_region: str, destination: str, purpose: str) -> bool:
        if self.purposes is not None and purpose not in self.purposes:
            return False
        if self.from_ is not None and source_region not in self.from_:
            return False
        if self.to == "same_region":
            return destination == source_region
        if self.to == "other_region":
            return destination != source_region
        return self.to is None or destination in self.to


@dataclass(frozen=True)
class DomainMember:
    """A column pattern (silo.table.column, `*` for any silo or table) in a join domain, for the
    purposes listed (all when None)."""

    domain: str
    pattern: str
    purposes: tuple[str, ...] | None = None

    def matches(self, silo: str, table: str, column: str, purpose: str) -> bool:
        want = self.pattern.split(".")
        return (all(w in ("*", got) for w, got in zip(want, (silo, table, column)))
                and (self.purposes is None or purpose in self.purposes))


@dataclass(frozen=True)
class Decision:
    """What may happen to one source column on its way out, and which rule says so."""

    action: str
    rule: str
    generalize: dict[str, Any] | None = None


ROLES = ("query", "coordinate", "materialize", "train")


@dataclass(frozen=True)
class Client:
    """Who holds a token: the region its results go to, the purposes it may declare and the roles
    it may act in (query through masks; coordinate residuals, transfers and semi-join keys;
    materialize in a silo; train and evaluate models). The request never says these, the token does."""

    identity: str
    token_env: str
    purposes: tuple[str, ...]
    region: str
    roles: tuple[str, ...] = ("query",)


@dataclass(frozen=True)
class Policy:
    path: str
    purposes: tuple[str, ...]
    clients: dict[str, Client]
    subjects: dict[str, str]
    generalize: dict[str, dict[str, Any]]
    classification_rules: dict[str, tuple[Rule, ...]]
    overrides: dict[str, tuple[Rule, ...]]  # "silo.table.column" pattern -> rules
    catalog: Catalog = field(repr=False)
    join_domains: tuple[DomainMember, ...] = ()
    dp: Any = None  # fedlake.policy.dp.DPSettings, or None: aggregate-only data then cannot leave
    training: TrainingPolicy = field(default_factory=TrainingPolicy)  # per silo: what a training round must meet

    def domain(self, silo: str, table: str, column: str, purpose: str) -> str:
        """The join domain whose key pseudonymizes this column for this purpose: a declared one, or
        the column's own, so that only columns declared to join line up."""
        for member in self.join_domains:
            if member.matches(silo, table, column, purpose):
                return member.domain
        return f"{silo}.{table}.{column}"

    def rules_for(self, silo: str, table: str, column: str) -> tuple[Rule, ...]:
        rules: list[Rule] = []
        for pattern in (f"{silo}.{table}.{column}", f"*.{table}.{column}", f"{silo}.*.{column}", f"*.*.{column}"):
            rules.extend(self.overrides.get(pattern, ()))
        classification = self.catalog.table(silo, table).classification(column)
        return (*rules, *self.classification_rules.get(classification, ()))

    def decide(self, silo: str, table: str, column: str, destination: str, purpose: str) -> Decision:
        """The decision for one source column leaving `silo` towards region `destination`."""
        if purpose not in self.purposes:
            return Decision("deny", f"{self.path}: purposes (unknown purpose '{purpose}')")
        source_region = self.catalog.silo(silo).region
        for rule in self.rules_for(silo, table, column):
            if rule.matches(source_region, destination, purpose):
                return Decision(
                    rule.action,
                    f"{self.path}: {rule.where}",
                    generalize=self.generalize.get(column) if rule.action == "generalize" else None,
                )
        return Decision("deny", f"{self.path}: no rule allows {silo}.{table}.{column} to {destination} for {purpose}")

    def client_purposes(self, identity: str) -> tuple[str, ...]:
        return self.clients[identity].purposes

    def tokens(self) -> dict[str, str]:
        """token -> identity, read from each client's environment variable (clients without one set are left out)."""
        return {os.environ[c.token_env]: c.identity for c in self.clients.values() if os.environ.get(c.token_env)}


def load_policy(path: str | os.PathLike, catalog: Catalog) -> Policy:
    path = str(path)
    return parse_policy(read_yaml(path), catalog, path)


def _regions(catalog: Catalog) -> set[str]:
    return {spec.region for spec in catalog.silos.values()}


def parse_policy(raw: Any, catalog: Catalog, path: str = "policies.yaml") -> Policy:
    if not isinstance(raw, dict):
        raise ConfigError(path, "<file>", "expected a mapping")
    allowed_top = {"purposes", "clients", "subjects", "aggregate", "generalize", "classifications", "overrides",
                   "join_domains", "dp", "training"}  # aggregate: only to say it is gone
    for key in raw:
        if key not in allowed_top:
            raise ConfigError(path, str(key), f"unknown key (allowed: {', '.join(sorted(allowed_top))})")

    purposes = raw.get("purposes")
    if not isinstance(purposes, list) or not purposes or not all(isinstance(p, str) for p in purposes):
        raise ConfigError(path, "purposes", "expected a non-empty list of purpose names")
    purposes = tuple(purposes)

    clients = {}
    raw_clients = raw.get("clients") or {}
    if not isinstance(raw_clients, dict):
        raise ConfigError(path, "clients", f"expected a mapping of client name to {{token_env: VARIABLE, region: REGION, "
                          f"purposes: [...], roles: [...]}}, not a {type(raw_clients).__name__}")
    for identity, body in raw_clients.items():
        key = f"clients.{identity}"
        if not isinstance(body, dict) or not isinstance(body.get("token_env"), str):
            raise ConfigError(path, key, "expected {token_env: VARIABLE, region: REGION, purposes: [...], roles: [...]}")
        unknown = set(body) - {"token_env", "region", "purposes", "roles"}
        if unknown:
            raise ConfigError(path, f"{key}.{sorted(unknown)[0]}", "unknown key (allowed: token_env, region, purposes, roles)")
        for listed in ("purposes", "roles"):
            if not isinstance(body.get(listed) or [], list):
                raise ConfigError(path, f"{key}.{listed}", f"expected a list, not {type(body[listed]).__name__} {body[listed]!r}")
        client_purposes = body.get("purposes") or []
        for i, p in enumerate(client_purposes):
            if p not in purposes:
                raise ConfigError(path, f"{key}.purposes[{i}]", f"unknown purpose '{p}' (declared: {', '.join(purposes)})")
        region = body.get("region", catalog.governed_region)
        if region not in _regions(catalog):
            raise ConfigError(path, f"{key}.region", f"expected the region the client's results go to, one of {', '.join(sorted(_regions(catalog)))}")
        roles = body.get("roles") or ["query"]
        for i, role in enumerate(roles):
            if role not in ROLES:
                raise ConfigError(path, f"{key}.roles[{i}]", f"unknown role '{role}' (allowed: {', '.join(ROLES)})")
        clients[str(identity)] = Client(str(identity), body["token_env"], tuple(client_purposes), region, tuple(roles))

    all_tables = {t for spec in catalog.silos.values() for t in spec.tables}
    subjects = {}
    for table, column in (raw.get("subjects") or {}).items():
        if table not in all_tables:
            raise ConfigError(path, f"subjects.{table}", f"unknown table (known: {', '.join(sorted(all_tables))})")
        owners = [spec for spec in catalog.silos.values() if table in spec.tables]
        if any(column not in spec.tables[table].columns for spec in owners):
            raise ConfigError(path, f"subjects.{table}", f"unknown column '{column}' in {table}")
        subjects[str(table)] = str(column)

    if "aggregate" in raw:
        raise ConfigError(path, "aggregate", "k-anonymity thresholds are gone: aggregate-only columns leave only as "
                          "differentially private aggregates; declare `dp` (epsilon, delta, budget, bounds) instead")

    raw_generalize = raw.get("generalize") or {}
    if not isinstance(raw_generalize, dict):
        raise ConfigError(path, "generalize", "expected a mapping of column name to {method: ..., ...}")
    generalize = {str(column): _parse_generalize(path, f"generalize.{column}", spec) for column, spec in raw_generalize.items()}

    regions = _regions(catalog)
    classification_rules = {}
    for classification, rules in (raw.get("classifications") or {}).items():
        key = f"classifications.{classification}"
        if classification not in CLASSIFICATIONS:
            raise ConfigError(path, key, f"unknown classification (allowed: {', '.join(CLASSIFICATIONS)})")
        classification_rules[classification] = _parse_rules(path, key, rules, purposes, regions)
    for classification in CLASSIFICATIONS:
        classification_rules.setdefault(classification, ())

    overrides = {}
    for pattern, rules in (raw.get("overrides") or {}).items():
        key = f"overrides.{pattern}"
        _check_pattern(path, key, str(pattern), catalog)
        overrides[str(pattern)] = _parse_rules(path, key, rules, purposes, regions)

    join_domains = _parse_domains(path, raw.get("join_domains") or {}, purposes, catalog)
    dp = None
    if raw.get("dp") is not None:
        from fedlake.policy.dp import parse_dp

        dp = parse_dp(raw["dp"], path)
    policy = Policy(
        join_domains=join_domains,
        dp=dp,
        training=parse_training(raw.get("training"), list(catalog.silos), path),
        path=path,
        purposes=purposes,
        clients=clients,
        subjects=subjects,
        generalize=generalize,
        classification_rules=classification_rules,
        overrides=overrides,
        catalog=catalog,
    )
    for pattern, rules in overrides.items():
        for rule in rules:
            if rule.action == "generalize" and pattern.split(".")[-1] not in generalize:
                raise ConfigError(path, rule.where, f"generalize needs a `generalize.{pattern.split('.')[-1]}` entry")
    return policy


# Each generalization method's settings: (type, check, what the check wants), checked at load so
# that a width of "ten" is an error naming its key, not a failed query later.
GENERALIZE_SETTINGS: dict[str, dict[str, tuple[tuple[type, ...], Any, str]]] = {
    "age_band": {"width": ((int,), lambda v: v > 0, "a positive whole number of years"),
                 "as_of": ((str, dt.date), lambda v: bool(_iso_date(v)), "a date, YYYY-MM-DD")},
    "prefix": {"length": ((int,), lambda v: v > 0, "a positive whole number of characters")},
}


def _iso_date(value: Any) -> dt.date | None:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        return None


def _parse_generalize(path: str, key: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or spec.get("method") not in GENERALIZE_METHODS:
        raise ConfigError(path, key, f"expected {{method: {' | '.join(GENERALIZE_METHODS)}, ...}}")
    settings = GENERALIZE_SETTINGS[spec["method"]]
    for name, value in spec.items():
        if name == "method":
            continue
        if name not in settings:
            raise ConfigError(path, f"{key}.{name}", f"unknown setting for {spec['method']} (allowed: {', '.join(settings)})")
        kinds, check, wanted = settings[name]
        if not isinstance(value, kinds) or isinstance(value, bool) or not check(value):
            raise ConfigError(path, f"{key}.{name}", f"expected {wanted}, not {type(value).__name__} {value!r}")
    return dict(spec)


def _parse_domains(path: str, raw: Any, purposes: tuple[str, ...], catalog: Catalog) -> tuple[DomainMember, ...]:
    if not isinstance(raw, dict):
        raise ConfigError(path, "join_domains", "expected a mapping of domain name to the columns that join in it")
    members = []
    for domain, entries in raw.items():
        key = f"join_domains.{domain}"
        if not isinstance(entries, list) or not entries:
            raise ConfigError(path, key, "expected a list of silo.table.column patterns")
        for i, entry in enumerate(entries):
            where = f"{key}[{i}]"
            if isinstance(entry, str):
                entry = {"column": entry}
            if not isinstance(entry, dict) or not isinstance(entry.get("column"), str) or set(entry) - {"column", "purposes"}:
                raise ConfigError(path, where, "expected a pattern or {column: pattern, purposes: [...]}")
            _check_pattern(path, where, entry["column"], catalog)
            listed = entry.get("purposes")
            if listed is not None and (not isinstance(listed, list) or any(p not in purposes for p in listed)):
                raise ConfigError(path, f"{where}.purposes", f"expected a list of declared purposes ({', '.join(purposes)})")
            members.append(DomainMember(str(domain), entry["column"], tuple(listed) if listed is not None else None))
    return tuple(members)


def _check_pattern(path: str, key: str, pattern: str, catalog: Catalog) -> None:
    parts = pattern.split(".")
    if len(parts) != 3:
        raise ConfigError(path, key, "expected silo.table.column (use * for any silo or table)")
    silo, table, column = parts
    if silo != "*" and silo not in catalog.silos:
        raise ConfigError(path, key, f"unknown silo '{silo}' (known: {', '.join(catalog.silos)})")
    silos = catalog.silos.values() if silo == "*" else [catalog.silo(silo)]
    tables = [(s, t) for s in silos for name, t in s.tables.items() if table in ("*", name)]
    if not tables:
        raise ConfigError(path, key, f"unknown table '{table}'")
    if not any(column in t.columns for _, t in tables):
        raise ConfigError(path, key, f"unknown column '{column}' in {silo}.{table}")


def _parse_rules(path: str, key: str, rules: Any, purposes: tuple[str, ...], regions: set[str]) -> tuple[Rule, ...]:
    if not isinstance(rules, list) or not rules:
        raise ConfigError(path, key, "expected a list of rules")
    parsed = []
    for i, rule in enumerate(rules):
        where = f"{key}[{i}]"
        if not isinstance(rule, dict):
            raise ConfigError(path, where, "expected a mapping with an action")
        for field_name in rule:
            if field_name not in RULE_KEYS:
                raise ConfigError(path, f"{where}.{field_name}", f"unknown rule field (allowed: {', '.join(sorted(RULE_KEYS))})")
        action = rule.get("action")
        if action not in ACTIONS:
            raise ConfigError(path, f"{where}.action", f"unknown action {action!r} (allowed: {', '.join(ACTIONS)})")
        rule_purposes = rule.get("purposes")
        if rule_purposes is not None:
            for j, p in enumerate(rule_purposes):
                if p not in purposes:
                    raise ConfigError(path, f"{where}.purposes[{j}]", f"unknown purpose '{p}' (declared: {', '.join(purposes)})")
            rule_purposes = tuple(rule_purposes)
        to = rule.get("to")
        if isinstance(to, list):
            for region in to:
                if region not in regions:
                    raise ConfigError(path, f"{where}.to", f"unknown region '{region}' (known: {', '.join(sorted(regions))})")
            to = tuple(to)
        elif to not in (None, "same_region", "other_region"):
            raise ConfigError(path, f"{where}.to", "expected same_region, other_region or a list of regions")
        from_ = rule.get("from")
        if from_ is not None:
            if not isinstance(from_, list) or any(r not in regions for r in from_):
                raise ConfigError(path, f"{where}.from", f"expected a list of known regions ({', '.join(sorted(regions))})")
            from_ = tuple(from_)
        parsed.append(Rule(where=where, action=action, to=to, from_=from_, purposes=rule_purposes))
    return tuple(parsed)


POLICIES_ENV = "FEDLAKE_POLICIES"


def default_policy_path() -> Path:
    return Path(os.environ.get(POLICIES_ENV, "policies.yaml"))
