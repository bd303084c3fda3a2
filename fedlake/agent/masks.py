"""Masks at the reference: every table a request names is bound, before the request's own logic
runs, to a masked relation for (identity, purpose, destination region).

Allowed columns appear as they are; pseudonymized ones as the keyed HMAC of their value (the key of
the purpose and the column's join domain); generalized ones generalized; denied ones are absent, and
naming one is an error naming the column and the rule. Columns the policy lets out only in aggregate
appear, but may be used only where the DP release can bound them (see fedlake.agent.dp_query). So
every clause of the request (predicates, joins, ordering, subqueries, errors) sees only masked
values: enforcement no longer depends on understanding what the request computes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import build_scope

from fedlake.agent.lineage import name_outputs
from fedlake.agent.subset import RESERVED_PREFIX, Refused, check_subset
from fedlake.policy.model import Policy
from fedlake.policy.transforms import derive_key, generalize_sql, hmac_sql, key_params, normalized_sql

MASKED_PREFIX = f"{RESERVED_PREFIX}_m_"
SUBJECT = f"{RESERVED_PREFIX}_subject"
PSEUDONYM_META = "fedlake_pseudonym"  # marks a query's references to pseudonymized columns: their domain
DEFERRED_OUTPUT = "fedlake_deferred_output"  # marks an output column keyed at the output: its domain


def key_param(domain: str) -> str:
    """The query parameter names of one join domain's key."""
    return f"{RESERVED_PREFIX}_k{hashlib.sha256(domain.encode()).hexdigest()[:12]}"
STRICTNESS = {"allow": 0, "generalize": 1, "pseudonymize": 1, "aggregate": 2, "deny": 3}


class MaskDenied(Refused):
    """A request names a column its masks leave out; the message names the column and the rule."""


@dataclass(frozen=True)
class ColumnMask:
    column: str
    action: str  # allow | pseudonymize | generalize | aggregate | deny
    rule: str
    sql_type: str  # the type the masked relation shows
    domain: str = ""  # pseudonymize: the join domain whose key is used
    generalize: dict[str, Any] | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"column": self.column, "action": self.action, "rule": self.rule, "domain": self.domain}


@dataclass(frozen=True)
class TableMask:
    silo: str
    table: str
    columns: dict[str, ColumnMask]
    subject: str | None = None  # the raw column naming each row's data subject, for DP bounding

    @property
    def masked_name(self) -> str:
        return f"{MASKED_PREFIX}{self.table}"

    def visible(self) -> dict[str, str]:
        """{column: SQL type} of the masked relation: every column but the denied ones."""
        return {c.column: c.sql_type for c in self.columns.values() if c.action != "deny"}

    def aggregate_only(self) -> set[str]:
        return {c.column for c in self.columns.values() if c.action == "aggregate"}


def table_mask(
    policy: Policy, silo: str, table: str, types: dict[str, str], purpose: str, destination: str,
    derived: dict[str, Any] | None = None,
) -> TableMask:
    """The mask of one table for a purpose and destination. A declared table's columns follow the
    policy; a table fedlake materialized here holds values already masked for the purpose it was
    made for (`derived`: its annotations), so each of its columns takes the strictest decision of
    the base columns it was made of, and a column still needing a rewrite is denied."""
    columns = {}
    declared = table in policy.catalog.silo(silo).tables
    for column, sql_type in types.items():
        if declared and column in policy.catalog.silo(silo).tables[table].columns:
            columns[column] = _declared(policy, silo, table, column, sql_type, purpose, destination)
        elif derived is not None:
            columns[column] = _derived(policy, silo, table, column, sql_type, purpose, destination, derived)
        else:
            columns[column] = ColumnMask(column, "deny", f"{policy.catalog.path}: silos.{silo}.tables", sql_type,
                                         reason=f"{silo}.{table}.{column} has no classification")
    subject = policy.subjects.get(table) if declared else None
    return TableMask(silo, table, columns, subject if subject in types else None)


def _declared(policy: Policy, silo: str, table: str, column: str, sql_type: str, purpose: str, destination: str) -> ColumnMask:
    decision = policy.decide(silo, table, column, destination, purpose)
    if decision.action == "deny":
        return ColumnMask(column, "deny", decision.rule, sql_type, reason=f"it may not leave for {purpose} to {destination}")
    if decision.action == "pseudonymize":
        return ColumnMask(column, "pseudonymize", decision.rule, "VARCHAR", domain=policy.domain(silo, table, column, purpose))
    if decision.action == "generalize":
        if decision.generalize is None:
            return ColumnMask(column, "deny", decision.rule, sql_type, reason=f"no `generalize.{column}` method is declared")
        return ColumnMask(column, "generalize", decision.rule, "VARCHAR", generalize=decision.generalize)
    return ColumnMask(column, decision.action, decision.rule, sql_type)


def _derived(policy: Policy, silo: str, table: str, column: str, sql_type: str, purpose: str, destination: str,
             derived: dict[str, Any]) -> ColumnMask:
    rule = f"{policy.path}: (made by fedlake in {silo} for purpose {derived.get('purpose')})"
    if derived.get("purpose") != purpose:
        return ColumnMask(column, "deny", rule, sql_type,
                          reason=f"{silo}.{table} was made for purpose '{derived.get('purpose')}', not '{purpose}'")
    uses = derived.get("lineage", {}).get(column)
    if uses is None:
        return ColumnMask(column, "deny", rule, sql_type, reason=f"{silo}.{table}.{column} has no recorded lineage")
    strictest = ColumnMask(column, "allow", rule, sql_type)
    for use in uses:
        mask = _declared(policy, silo, use["table"], use["column"], sql_type, purpose, destination)
        was = use.get("mask", "allow")
        action = "allow" if mask.action in ("pseudonymize", "generalize") and was == mask.action else mask.action
        if action in ("pseudonymize", "generalize"):
            action = "deny"  # stored raw, but the policy rewrites it for this destination
        if STRICTNESS[action] > STRICTNESS[strictest.action]:
            strictest = ColumnMask(column, action, mask.rule, sql_type,
                                   reason=f"made from {silo}.{use['table']}.{use['column']}")
    return strictest


@dataclass
class BoundQuery:
    """A request with its tables bound to masked relations, ready to run in the silo."""

    tree: exp.Query  # the caller's query over the masked relations (qualified), without their definitions
    masks: dict[str, TableMask]  # by table name
    used: dict[str, set[str]]  # masked columns each table's relation must provide
    aggregate_refs: list[tuple[exp.Column, TableMask]] = field(default_factory=list)  # aggregate-only column uses
    deferred: set[tuple[str, str]] = field(default_factory=set)  # pseudonyms keyed at the output (see defer)

    def relation(self, mask: TableMask, master: bytes, purpose: str, subject: bool = False,
                 estimate: bool = False) -> tuple[exp.Select, dict[str, bytes]]:
        """The masked relation of one table, and the key parameters it binds. For an `estimate`,
        pseudonyms stand as their raw column: a keyed HMAC is one to one, so counts, distinct
        values and join matches are the same, and the engine's statistics of the column apply."""
        params: dict[str, bytes] = {}
        projections = []
        for name in sorted(self.used.get(mask.table, set())):
            column = mask.columns[name]
            raw = exp.column(name, quoted=True)
            if column.action == "pseudonymize" and estimate:
                value = raw
            elif column.action == "pseudonymize" and (mask.table, name) in self.deferred:
                value = normalized_sql(raw)
            elif column.action == "pseudonymize":
                param = key_param(column.domain)
                params.update(key_params(derive_key(master, purpose, column.domain), param))
                value = hmac_sql(raw, param)
            elif column.action == "generalize":
                value = generalize_sql(raw, column.generalize or {})
            else:
                value = raw
            projections.append(exp.alias_(value, name, quoted=True))
        if subject and mask.subject:
            projections.append(exp.alias_(exp.column(mask.subject, quoted=True), SUBJECT, quoted=True))
        if not projections:
            projections.append(exp.alias_(exp.Literal.number(1), f"{RESERVED_PREFIX}_row", quoted=True))
        return exp.select(*projections).from_(exp.table_(mask.table, quoted=True)), params

    def sql(self, master: bytes, purpose: str, subject_tables: set[str] = frozenset(), tree: exp.Query | None = None,
            estimate: bool = False) -> tuple[str, dict[str, bytes]]:
        """The whole statement: the masked relations as CTEs ahead of the caller's query. The
        `estimate` form, for the engine's planner only, reads pseudonymized columns raw and compares
        them with no literal (each becomes NULL) and with no column of another join domain (the
        comparison becomes NULL), so that no estimate can tell how often a chosen raw value occurs
        or whether differently keyed columns share raw values."""
        tree = (tree or self.tree).copy()
        if estimate:
            for predicate in list(tree.find_all(exp.Predicate)):
                domains = {c.meta[PSEUDONYM_META] for c in predicate.find_all(exp.Column) if c.meta.get(PSEUDONYM_META)}
                if len(domains) > 1:  # raw values of differently keyed columns: their tokens never meet
                    predicate.replace(exp.Null())
                elif domains:
                    for literal in list(predicate.find_all(exp.Literal)):
                        literal.replace(exp.Null())
            if self._plain_for_estimate(subject_tables):
                # every mask is the identity here: the raw tables themselves, whose statistics the
                # engine propagates (through a CTE, DuckDB would estimate without them)
                by_masked = {m.masked_name: m.table for m in self.masks.values()}
                for table in tree.find_all(exp.Table):
                    if table.name in by_masked:
                        table.set("this", exp.to_identifier(by_masked[table.name], quoted=True))
                return tree.sql("duckdb"), {}
        params: dict[str, bytes] = {}
        if not estimate:
            for column in list(tree.find_all(exp.Column)):
                domain = column.meta.get(DEFERRED_OUTPUT)
                if domain:
                    param = key_param(domain)
                    params.update(key_params(derive_key(master, purpose, domain), param))
                    column.replace(hmac_sql(column.copy(), param))
        ctes = []
        for mask in self.masks.values():
            relation, bound = self.relation(mask, master, purpose, subject=mask.table in subject_tables, estimate=estimate)
            params.update(bound)
            ctes.append(exp.CTE(this=relation, alias=exp.TableAlias(this=exp.to_identifier(mask.masked_name, quoted=True))))
        existing = tree.args.get("with_")
        if existing is not None:
            ctes += existing.expressions
        tree.set("with_", exp.With(expressions=ctes))
        return tree.sql("duckdb"), params


    def _plain_for_estimate(self, subject_tables: set[str]) -> bool:
        return not subject_tables and all(
            self.masks[table].columns[column].action in ("allow", "pseudonymize")
            for table, columns in self.used.items() for column in columns
        )


def bind(tree: exp.Query, masks: dict[str, TableMask], policy_path: str) -> BoundQuery:
    """Point every table reference at its masked relation and qualify the query against the masked
    schemas; naming a denied column is a MaskDenied naming the column and its rule."""
    tree = name_outputs(tree.copy())  # the names DuckDB shows, whichever engine runs it
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    clash = ctes & set(masks)
    if clash:
        raise Refused(f"a CTE may not take the name of the silo's table {sorted(clash)[0]}")
    for table in list(tree.find_all(exp.Table)):
        if table.name in ctes:
            continue
        mask = masks[table.name]
        if not table.alias:
            table.set("alias", exp.TableAlias(this=exp.to_identifier(table.name, quoted=True)))
        table.set("this", exp.to_identifier(mask.masked_name, quoted=True))
    schema = {mask.masked_name: mask.visible() for mask in masks.values()}
    try:
        qualified = qualify(tree, schema=schema, dialect="duckdb", validate_qualify_columns=True, quote_identifiers=True,
                            expand_alias_refs=True)
    except (OptimizeError, KeyError, ValueError) as exc:
        raise _explain_unknown(tree, masks, str(exc)) from None
    for node in qualified.walk():
        if isinstance(node, exp.TableColumn):
            raise Refused(f"whole-row reference {node.sql('duckdb')} is not in the accepted SQL subset (name its columns)")
    check_subset(qualified, bound=True)
    bound = BoundQuery(qualified, masks, {})
    by_masked = {mask.masked_name: mask for mask in masks.values()}
    pseudonyms: dict[tuple[str, str], list[tuple[exp.Column, str]]] = {}
    root = build_scope(qualified)
    for scope in root.traverse() if root else ():
        for column in scope.columns:
            source = scope.sources.get(column.table)
            if isinstance(source, exp.Table) and source.name in by_masked:
                mask = by_masked[source.name]
                bound.used.setdefault(mask.table, set()).add(column.name)
                if mask.columns[column.name].action == "pseudonymize":
                    column.meta[PSEUDONYM_META] = mask.columns[column.name].domain
                    pseudonyms.setdefault((mask.table, column.name), []).append((column, mask.columns[column.name].domain))
                if mask.columns[column.name].action == "aggregate":
                    bound.aggregate_refs.append((column, mask))
    if not bound.aggregate_refs:
        bound.deferred = defer(qualified, pseudonyms)
    return bound


def defer(tree: exp.Query, pseudonyms: dict[tuple[str, str], list[tuple[exp.Column, str]]]) -> set[tuple[str, str]]:
    """The pseudonymized columns that may be keyed at the output instead of at the reference.

    A keyed HMAC of the normalized value is one to one within its join domain, so equality between
    two such columns of one domain, grouping and COUNT(DISTINCT ...) give the same answers over the
    normalized raw values as over the tokens, and a group key hashed after grouping is the token the
    masked relation would have shown. A column qualifies only if every reference to it is of that
    kind, in the top-level SELECT, or is a top-level output (hashed there); anything else (a literal,
    a function, an order, another domain, a subquery) sees the token as before. The result is
    identical; only fewer values are hashed."""
    if not isinstance(tree, exp.Select) or any(j.args.get("using") for j in tree.args.get("joins") or []):
        return set()
    domain_of = {id(column): domain for refs in pseudonyms.values() for column, domain in refs}
    candidates = {key for key, refs in pseudonyms.items() if all(_equality_kind(c, tree) for c, _ in refs)}
    while True:  # an equality qualifies only if its other side is a candidate of the same domain
        owner = {id(c): key for key in candidates for c, _ in pseudonyms[key]}
        dropped = {key for key in candidates for column, domain in pseudonyms[key]
                   if isinstance(column.parent, exp.EQ) and not _partner_ok(column, domain, owner, domain_of)}
        if not dropped:
            break
        candidates -= dropped
    for key in candidates:
        for column, domain in pseudonyms[key]:
            if column.parent is tree or (isinstance(column.parent, exp.Alias) and column.parent.parent is tree):
                column.meta[DEFERRED_OUTPUT] = domain
    return candidates


def _equality_kind(column: exp.Column, tree: exp.Select) -> bool:
    if column.find_ancestor(exp.Select) is not tree:
        return False
    parent = column.parent
    if isinstance(parent, exp.EQ):
        return True
    if isinstance(parent, exp.Group):
        return True
    if parent is tree or (isinstance(parent, exp.Alias) and parent.parent is tree):
        return True
    return isinstance(parent, exp.Distinct) and len(parent.expressions) == 1 and isinstance(parent.parent, exp.Count)


def _partner_ok(column: exp.Column, domain: str, owner: dict[int, tuple[str, str]], domain_of: dict[int, str]) -> bool:
    equality = column.parent
    other = equality.expression if equality.this is column else equality.this
    return isinstance(other, exp.Column) and id(other) in owner and domain_of.get(id(other)) == domain


def _explain_unknown(tree: exp.Expression, masks: dict[str, TableMask], problem: str) -> Refused:
    """A column the query names that its masks leave out becomes a denial naming it and the rule;
    anything else stays an unknown-column error."""
    named = {c.name for c in tree.find_all(exp.Column)}
    for mask in masks.values():
        for column in mask.columns.values():
            if column.action == "deny" and column.column in named:
                reason = f": {column.reason}" if column.reason else ""
                return MaskDenied(f"column {column.column} of {mask.silo}.{mask.table} is denied for this request{reason} "
                                  f"[rule {column.rule}]")
    return Refused(f"the query does not fit the silo's tables: {problem.splitlines()[0]}")
