"""Training examples: AML examples built inside a silo from its own tables, credit examples from
the governed zone's compliant features.

An AML example is one account: numeric behaviour aggregated by one SQL statement that runs in the
silo, the account's memos (which stay in the agent's process: only the model's weights leave), and
a label that says whether the silo's own investigators confirmed a case on it.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa

from fedlake.learning.text import TextHasher
from fedlake.silos.base import Connector
from fedlake.silos.delta import delta_version

REPORTING_THRESHOLD = 10_000.0
FORWARD_WINDOW_HOURS = 72
HELD_OUT_SHARE = 5  # one account in five is held out, chosen by a hash of its id

# Each feature and the fixed (center, scale) it is standardized with. Fixed rather than fitted, so
# that no silo has to publish its statistics and every silo feeds the shared weights numbers on the
# same scale; the constants are the demo bank's pooled means and deviations, rounded (rare signals
# get a scale of 0.5 so that one unusual account does not dominate a clipped DP-SGD step).
AML_SCALING = {
    "log_transactions": (1.3, 1.0),
    "credit_share": (0.2, 0.3),
    "log_credit_volume": (3.7, 4.0),
    "log_debit_volume": (4.6, 3.0),
    "log_max_credit": (3.5, 3.8),
    "log_max_debit": (4.2, 2.8),
    "log_near_threshold_cash": (0.0, 0.5),
    "log_cash_credits": (0.06, 0.25),
    "cross_border_share": (0.17, 0.27),
    "cross_border_volume_share": (0.16, 0.3),
    "forwarded_share": (0.0, 0.5),
    "log_large_transactions": (0.0, 0.5),
    "log_counterparties": (1.24, 0.9),
    "log_countries": (0.82, 0.54),
    "in_out_balance": (0.11, 0.21),
    "has_transactions": (0.79, 0.41),
}
AML_FEATURES = tuple(AML_SCALING)
MEMO_SEPARATOR = "\n"


class Examples(Protocol):
    """What the local train step needs: labels, and model inputs for any subset of rows."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def inputs(self, index: np.ndarray) -> tuple[np.ndarray, ...]: ...


def held_out_mask(keys: list[str] | np.ndarray) -> np.ndarray:
    """A stable split by a hash of each key: the same rows are held out every round and every run."""
    return np.fromiter((zlib.crc32(str(k).encode()) % HELD_OUT_SHARE == 0 for k in keys), dtype=bool, count=len(keys))


@dataclass
class AMLData:
    """One silo's accounts as model inputs. Never serialized: it lives in the agent's process."""

    account_ids: np.ndarray  # object array of str
    numeric: np.ndarray  # float32 [n, len(AML_FEATURES)]
    ids: np.ndarray  # int64, every account's n-gram ids concatenated
    offsets: np.ndarray  # int64 [n], where each account's ids start
    labels: np.ndarray  # float32 [n], 1 where the silo's aml_cases name the account
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def _bag_lengths(self) -> np.ndarray:
        return np.diff(np.append(self.offsets, len(self.ids)))

    def inputs(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        starts = self.offsets[index]
        lengths = self._bag_lengths()[index]
        batch_offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        positions = np.repeat(starts - batch_offsets, lengths) + np.arange(lengths.sum())
        return self.numeric[index], self.ids[positions], batch_offsets

    def subset(self, mask: np.ndarray) -> AMLData:
        index = np.flatnonzero(mask)
        numeric, ids, offsets = self.inputs(index)
        return AMLData(self.account_ids[index], numeric, ids, offsets, self.labels[index], self.fingerprint)

    @staticmethod
    def concat(parts: list[AMLData]) -> AMLData:
        """Pooling, which only the benchmark's centralised ceiling may do."""
        shifts = np.cumsum([0] + [len(p.ids) for p in parts[:-1]])
        return AMLData(
            np.concatenate([p.account_ids for p in parts]),
            np.concatenate([p.numeric for p in parts]),
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.offsets + s for p, s in zip(parts, shifts)]),
            np.concatenate([p.labels for p in parts]),
            hashlib.sha256("".join(p.fingerprint for p in parts).encode()).hexdigest(),
        )


def aml_sql(domestic_countries: tuple[str, ...] = (), threshold: float = REPORTING_THRESHOLD) -> str:
    """The per-account aggregate, in DuckDB's dialect over the silo's own table names (PostgreSQL
    silos get it transpiled). `domestic_countries` says which counterparty countries are not
    cross-border for this silo's accounts; without them no flow counts as cross-border."""
    if domestic_countries:
        listed = ", ".join("'" + c.replace("'", "''") + "'" for c in domestic_countries)
        foreign = f"(t.counterparty_country IS NOT NULL AND t.counterparty_country NOT IN ({listed}))"
    else:
        foreign = "(1 = 0)"
    credit = "t.direction = 'credit'"
    debit = "t.direction = 'debit'"
    # One pass over the transactions with window functions, then one GROUP BY: no self-join, so a
    # silo without table statistics (a freshly loaded PostgreSQL) cannot pick a quadratic plan.
    return f"""
    WITH marked AS (
        SELECT t.account_id, t.ts, t.amount, t.direction, t.channel, t.counterparty_account,
               t.counterparty_country, t.memo, {foreign} AS is_foreign,
               max(CASE WHEN {credit} THEN t.amount ELSE 0 END) OVER (PARTITION BY t.account_id) AS largest_credit,
               first_value(t.ts) OVER (PARTITION BY t.account_id
                                       ORDER BY CASE WHEN {credit} THEN t.amount ELSE -1 END DESC, t.ts) AS largest_credit_at
        FROM transactions t
    ),
    per_account AS (
        SELECT t.account_id,
               count(*) AS transactions,
               sum(CASE WHEN {credit} THEN 1 ELSE 0 END) AS credits,
               sum(CASE WHEN {credit} THEN t.amount ELSE 0 END) AS credit_volume,
               sum(CASE WHEN {debit} THEN t.amount ELSE 0 END) AS debit_volume,
               max(t.largest_credit) AS max_credit,
               max(CASE WHEN {debit} THEN t.amount ELSE 0 END) AS max_debit,
               sum(CASE WHEN {credit} AND t.channel = 'cash' AND t.amount >= {0.9 * threshold} AND t.amount < {threshold}
                        THEN 1 ELSE 0 END) AS near_threshold_cash,
               sum(CASE WHEN {credit} AND t.channel = 'cash' THEN 1 ELSE 0 END) AS cash_credits,
               sum(CASE WHEN t.is_foreign THEN 1 ELSE 0 END) AS cross_border,
               sum(CASE WHEN t.is_foreign THEN t.amount ELSE 0 END) AS cross_border_volume,
               sum(CASE WHEN t.amount >= {threshold} THEN 1 ELSE 0 END) AS large_transactions,
               count(DISTINCT t.counterparty_account) AS counterparties,
               count(DISTINCT t.counterparty_country) AS countries,
               sum(CASE WHEN {debit} AND t.largest_credit > 0 AND t.ts >= t.largest_credit_at
                             AND t.ts < t.largest_credit_at + INTERVAL '{FORWARD_WINDOW_HOURS}' HOUR
                        THEN t.amount ELSE 0 END) AS forwarded,
               string_agg(t.memo, chr(10)) AS memos
        FROM marked t GROUP BY t.account_id
    )
    SELECT a.account_id,
           coalesce(p.transactions, 0) AS transactions, coalesce(p.credits, 0) AS credits,
           coalesce(p.credit_volume, 0) AS credit_volume, coalesce(p.debit_volume, 0) AS debit_volume,
           coalesce(p.max_credit, 0) AS max_credit, coalesce(p.max_debit, 0) AS max_debit,
           coalesce(p.near_threshold_cash, 0) AS near_threshold_cash, coalesce(p.cash_credits, 0) AS cash_credits,
           coalesce(p.cross_border, 0) AS cross_border, coalesce(p.cross_border_volume, 0) AS cross_border_volume,
           coalesce(p.large_transactions, 0) AS large_transactions,
           coalesce(p.counterparties, 0) AS counterparties, coalesce(p.countries, 0) AS countries,
           coalesce(p.forwarded, 0) AS forwarded, coalesce(p.max_credit, 0) AS largest_credit,
           p.memos,
           CASE WHEN c.account_id IS NULL THEN 0 ELSE 1 END AS label
    FROM accounts a
    LEFT JOIN per_account p ON p.account_id = a.account_id
    LEFT JOIN (SELECT DISTINCT account_id FROM aml_cases) c ON c.account_id = a.account_id
    ORDER BY a.account_id"""


def _column(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def aml_numeric(rows: pa.Table) -> np.ndarray:
    """AML_FEATURES from the aggregate's raw columns: logs of counts and amounts and shares in
    [0, 1], standardized with AML_SCALING, so that every silo feeds the shared weights comparable numbers."""
    c = {name: _column(rows, name) for name in rows.column_names if name not in ("account_id", "memos")}
    n = c["transactions"]
    features = {
        "log_transactions": np.log1p(n),
        "credit_share": _ratio(c["credits"], n),
        "log_credit_volume": np.log1p(c["credit_volume"]),
        "log_debit_volume": np.log1p(c["debit_volume"]),
        "log_max_credit": np.log1p(c["max_credit"]),
        "log_max_debit": np.log1p(c["max_debit"]),
        "log_near_threshold_cash": np.log1p(c["near_threshold_cash"]),
        "log_cash_credits": np.log1p(c["cash_credits"]),
        "cross_border_share": _ratio(c["cross_border"], n),
        "cross_border_volume_share": _ratio(c["cross_border_volume"], c["credit_volume"] + c["debit_volume"]),
        "forwarded_share": np.clip(_ratio(c["forwarded"], c["largest_credit"]), 0.0, 2.0),
        "log_large_transactions": np.log1p(c["large_transactions"]),
        "log_counterparties": np.log1p(c["counterparties"]),
        "log_countries": np.log1p(c["countries"]),
        "in_out_balance": _ratio(np.minimum(c["credit_volume"], c["debit_volume"]), np.maximum(c["credit_volume"], c["debit_volume"])),
        "has_transactions": (n > 0).astype(np.float64),
    }
    return np.stack([(features[name] - AML_SCALING[name][0]) / AML_SCALING[name][1] for name in AML_FEATURES], axis=1).astype(np.float32)


def versioned_fingerprint(digest: str, versions: dict[str, int | None]) -> str:
    """A data digest followed by the Delta version of each table it covers (`<sha256>@accounts=v3,...`),
    so that a model version names the exact table versions it saw, and retraining can pin them."""
    named = ",".join(f"{table}=v{version}" for table, version in sorted(versions.items()) if version is not None)
    return f"{digest}@{named}" if named else digest


def fingerprint_versions(fingerprint: str) -> dict[str, int]:
    """The Delta versions a fingerprint names: what `at_versions` pins to retrain on the same data."""
    _, _, named = fingerprint.partition("@")
    return {table: int(version[1:]) for table, _, version in (part.partition("=") for part in named.split(",") if part)}


def data_fingerprint(connector: Connector) -> str:
    """A digest of what the tables hold now, computed in the silo, and the Delta version of each: it
    identifies the data a model saw without revealing rows. Only exact aggregates (counts, amounts
    summed as integer cents, time range): a floating-point sum can differ in its last bits between
    two runs of a parallel engine, and the fingerprint must not change unless the data did."""
    sql = """
    SELECT (SELECT count(*) FROM accounts) AS accounts,
           (SELECT count(*) FROM aml_cases) AS cases,
           (SELECT count(DISTINCT account_id) FROM aml_cases) AS case_accounts,
           count(*) AS transactions,
           sum(CAST(round(amount * 100) AS BIGINT)) AS cents,
           min(ts) AS first_ts, max(ts) AS last_ts
    FROM transactions"""
    row = connector.execute(sql).read_all().to_pylist()[0]
    digest = hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()
    return versioned_fingerprint(digest, {table: delta_version(connector, table) for table in ("accounts", "aml_cases", "transactions")})


def aml_examples(
    connector: Connector, buckets: int = 2**14, domestic_countries: tuple[str, ...] = (), fingerprint: str | None = None
) -> AMLData:
    """Every account of the silo as an AML example, computed in place (one aggregate statement)."""
    rows = connector.execute(aml_sql(domestic_countries)).read_all()
    memos = rows.column("memos").to_pylist()
    ids, offsets = TextHasher(buckets).bags([m.split(MEMO_SEPARATOR) if m else [] for m in memos])
    return AMLData(
        account_ids=np.asarray(rows.column("account_id").to_pylist(), dtype=object),
        numeric=aml_numeric(rows),
        ids=ids,
        offsets=offsets,
        labels=_column(rows, "label").astype(np.float32),
        fingerprint=fingerprint if fingerprint is not None else data_fingerprint(connector),
    )


@dataclass
class TabularData:
    """Rows of numeric features (credit scoring)."""

    features: np.ndarray  # float32 [n, k]
    labels: np.ndarray  # float32 [n]

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, index: np.ndarray) -> tuple[np.ndarray]:
        return (self.features[index],)

    def subset(self, mask: np.ndarray) -> TabularData:
        return TabularData(self.features[mask], self.labels[mask])


def credit_examples(table: pa.Table, columns: list[str] | tuple[str, ...], label: str = "defaulted") -> tuple[np.ndarray, np.ndarray]:
    """(X, y) from the governed zone's customer_credit_features; a missing column is named."""
    missing = [c for c in (*columns, label) if c not in table.column_names]
    if missing:
        raise ValueError(f"credit features: column(s) {missing} not in the table (it has: {', '.join(table.column_names)})")
    features = np.stack([_column(table, c) for c in columns], axis=1)
    if not np.isfinite(features).all():
        bad = [c for i, c in enumerate(columns) if not np.isfinite(features[:, i]).all()]
        raise ValueError(f"credit features: column(s) {bad} hold null or non-finite values; fill them before training")
    return features.astype(np.float32), _column(table, label).astype(np.float32)
