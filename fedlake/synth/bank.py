"""The demo bank generator: a seeded global bank with planted ground truth, streamed in blocks.

Customers are homed in EU, US or SG and many also bank in another region. Each region's silo gets
its own customers, accounts, transactions and confirmed AML cases (and, in the EU, loans) with the
columns of silos.yaml. Two kinds of truth are planted, not guessed:

- loan defaults follow the documented formula of fedlake.synth.default_model, fed by features of
  the borrower's transactions in every region;
- laundering patterns (structuring, rapid pass-through, cross-border cycles) run through mule
  accounts of random customers, planted mostly in some regions, among honest customers who look
  like them, with cover stories in some memos; investigators confirmed only some of the involved
  accounts (aml_cases). How hard this is to find is set by fedlake.synth.laundering's knobs.

The full truth (loan_truth, aml_patterns, aml_pattern_accounts, aml_pattern_transactions) is for
evaluation only; the caller writes it outside every silo.

Generation streams blocks of customers: a block holds everything about its customers (all their
accounts in all regions, their transactions, the patterns among their accounts, their loans and
cases), so memory stays bounded at any scale and per-person features never span blocks. Output
is a pure function of (scale, seed, block_customers). Scale 1 is about 15k customers, 200k
transactions and 10k loans.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fedlake.synth import default_model, memos
from fedlake.synth import vocabulary as vocab
from fedlake.synth.laundering import (
    DEFAULT_KNOBS, STYLE_HEAD, Flow, LaunderingKnobs, lookalike_flows, memo_styles, pattern_region, ring_regions,
)

REGIONS = vocab.REGIONS
REGION_TABLES = {
    "EU": ("customers", "accounts", "transactions", "aml_cases", "loans"),
    "US": ("customers", "accounts", "transactions", "aml_cases"),
    "SG": ("customers", "accounts", "transactions", "aml_cases"),
}
TRUTH_TABLES = ("loan_truth", "aml_patterns", "aml_pattern_accounts", "aml_pattern_transactions")

CUSTOMERS_AT_SCALE_1 = 15_000
MIN_BLOCK_CUSTOMERS = 100
MAX_CUSTOMERS = 10**7  # the SG NRIC has seven digits, and every person needs a distinct one
PATTERNS_AT_SCALE_1 = {"structuring": 40, "pass_through": 40, "cross_border_cycle": 25}
MIN_PATTERNS_PER_KIND = 3
HOME_SHARES = (0.45, 0.35, 0.20)
ONE_OTHER_REGION_SHARE = 0.35
BOTH_OTHER_REGIONS_SHARE = 0.08
DEBITS_PER_YEAR = 10.0
CREDITS_PER_YEAR = 3.0
INTERNAL_TRANSFER_SHARE = 0.3
REPORTING_THRESHOLD = 10_000.0

_SCHEMAS = {
    "customers": pa.schema(
        [
            ("customer_id", pa.string()),
            ("national_id", pa.string()),
            ("full_name", pa.string()),
            ("email", pa.string()),
            ("phone", pa.string()),
            ("date_of_birth", pa.date32()),
            ("postcode", pa.string()),
            ("home_region", pa.string()),
            ("income", pa.float64()),
            ("employment_years", pa.int64()),
            ("created_at", pa.timestamp("us")),
        ]
    ),
    "accounts": pa.schema(
        [
            ("account_id", pa.string()),
            ("customer_id", pa.string()),
            ("account_type", pa.string()),
            ("currency", pa.string()),
            ("opened_at", pa.timestamp("us")),
        ]
    ),
    "transactions": pa.schema(
        [
            ("txn_id", pa.string()),
            ("account_id", pa.string()),
            ("ts", pa.timestamp("us")),
            ("amount", pa.float64()),
            ("currency", pa.string()),
            ("direction", pa.string()),
            ("counterparty_account", pa.string()),
            ("counterparty_country", pa.string()),
            ("channel", pa.string()),
            ("merchant_category", pa.string()),
            ("memo", pa.string()),
        ]
    ),
    "aml_cases": pa.schema(
        [
            ("case_id", pa.string()),
            ("account_id", pa.string()),
            ("pattern_kind", pa.string()),
            ("opened_at", pa.timestamp("us")),
            ("status", pa.string()),
        ]
    ),
    "loans": pa.schema(
        [
            ("loan_id", pa.string()),
            ("customer_id", pa.string()),
            ("principal", pa.float64()),
            ("rate", pa.float64()),
            ("term_months", pa.int64()),
            ("purpose", pa.string()),
            ("issued_at", pa.timestamp("us")),
            ("defaulted", pa.bool_()),
        ]
    ),
    "loan_truth": default_model.LOAN_TRUTH_SCHEMA,
    "aml_patterns": pa.schema(
        [
            ("pattern_id", pa.string()),
            ("kind", pa.string()),
            ("n_accounts", pa.int64()),
            ("regions", pa.string()),
            ("started_at", pa.timestamp("us")),
        ]
    ),
    "aml_pattern_accounts": pa.schema(
        [("pattern_id", pa.string()), ("region", pa.string()), ("account_id", pa.string())]
    ),
    "aml_pattern_transactions": pa.schema(
        [("pattern_id", pa.string()), ("region", pa.string()), ("txn_id", pa.string())]
    ),
}


def schemas() -> dict[str, pa.Schema]:
    """Arrow schema of every silo table (the same in every region) and every truth table."""
    return dict(_SCHEMAS)


@dataclass
class Block:
    """Everything about one block of customers: their silo rows and the matching truth rows."""

    silo_tables: dict[str, dict[str, pa.Table]]
    truth: dict[str, pa.Table]


def customer_count(scale: float) -> int:
    """Number of distinct people at a scale (at least 50, so tiny scales still have patterns)."""
    return max(50, round(CUSTOMERS_AT_SCALE_1 * scale))


def expected_pattern_counts(scale: float) -> dict[str, int]:
    """Laundering patterns of each kind planted at a scale: proportional, at least
    MIN_PATTERNS_PER_KIND each, so that a test-size bank still has confirmed cases to learn from."""
    return {kind: max(MIN_PATTERNS_PER_KIND, round(count * scale)) for kind, count in PATTERNS_AT_SCALE_1.items()}


# --------------------------------------------------------------------------------------------
# Time, ids and small helpers
# --------------------------------------------------------------------------------------------

_US_PER_DAY = 86_400 * 1_000_000
_US_PER_HOUR = 3_600 * 1_000_000
_YEAR_START = int(np.datetime64("2025-01-01T00:00:00", "us").astype(np.int64))
_YEAR_END = int(np.datetime64("2026-01-01T00:00:00", "us").astype(np.int64)) - 1
_MONTH_STARTS = (
    np.arange("2025-01", "2026-02", dtype="datetime64[M]").astype("datetime64[us]").astype(np.int64)
)
_CUSTOMER_EPOCH = int(np.datetime64("2008-01-01T00:00:00", "us").astype(np.int64))
_CUSTOMER_EPOCH_END = int(np.datetime64("2024-10-01T00:00:00", "us").astype(np.int64))
_LOAN_WINDOW_START = int(np.datetime64("2026-01-01T00:00:00", "us").astype(np.int64))
_LOAN_WINDOW_DAYS = 90

_FX = np.array([default_model.FX_TO_EUR[vocab.REGION_CURRENCY[r]] for r in REGIONS])
_COUNTRY_INDEX = {code: i for i, code in enumerate(vocab.COUNTRIES)}
_CATEGORY_INDEX = {name: i for i, name in enumerate(vocab.CATEGORIES)}
_CHANNEL_INDEX = {name: i for i, name in enumerate(vocab.CHANNELS)}
_ACCOUNT_TYPES = ("checking", "savings", "credit_card")
CHECKING, SAVINGS, CREDIT_CARD = 0, 1, 2

# Home "nationality formats": the five EU home countries, then US, then SG.
_HOME_FORMATS = vocab.EU_HOME_COUNTRIES + ("US", "SG")
_US_FORMAT, _SG_FORMAT = len(vocab.EU_HOME_COUNTRIES), len(vocab.EU_HOME_COUNTRIES) + 1

# Counterparty kinds of a transaction.
_CP_EXTERNAL, _CP_INTERNAL, _CP_NONE = 0, 1, 2
_CP_KINDS = {"external": _CP_EXTERNAL, "internal": _CP_INTERNAL, "none": _CP_NONE}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _strings(values: list[str] | tuple[str, ...]) -> pa.Array:
    return pa.array(list(values), pa.string())


def _take(values: pa.Array, indices: np.ndarray) -> pa.Array:
    return pc.take(values, pa.array(np.asarray(indices, dtype=np.int64)))


def _padded(numbers: np.ndarray, width: int) -> pa.Array:
    """Zero-padded decimal strings of non-negative integers."""
    return pc.utf8_lpad(pc.cast(pa.array(np.asarray(numbers, dtype=np.int64)), pa.string()), width, padding="0")


def _join(*parts: pa.Array | str, sep: str = "") -> pa.Array:
    return pc.binary_join_element_wise(*parts, sep, null_handling="skip")


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    return _join(prefix, _padded(numbers, width))


def _timestamps(us: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(us, dtype=np.int64).astype("datetime64[us]"), pa.timestamp("us"))


def _pick_cdf(rng: np.random.Generator, cdf_rows: np.ndarray) -> np.ndarray:
    """One categorical draw per row, given each row's cumulative distribution."""
    u = rng.random(len(cdf_rows)) * cdf_rows[:, -1]
    return np.minimum((u[:, None] >= cdf_rows).sum(axis=1), cdf_rows.shape[1] - 1)


@dataclass(frozen=True)
class _IdSpace:
    """Per-region affine permutations, so local ids reveal neither order nor cross-silo linkage."""

    customer: tuple[tuple[int, int], ...]
    account: tuple[tuple[int, int], ...]
    national: dict[int, tuple[int, int]]
    salt: int

    @staticmethod
    def from_seed(seed: int) -> _IdSpace:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))

        def affine(modulus: int) -> tuple[int, int]:
            while True:
                a = int(rng.integers(modulus // 10, modulus))
                if a % 2 and a % 5:
                    return a, int(rng.integers(0, modulus))

        return _IdSpace(
            customer=tuple(affine(10**8) for _ in REGIONS),
            account=tuple(affine(10**9) for _ in REGIONS),
            national={10**10: affine(10**10), 10**9: affine(10**9), 10**7: affine(10**7)},
            salt=int(rng.integers(0, 2**62)),
        )

    @staticmethod
    def apply(pair: tuple[int, int], modulus: int, numbers: np.ndarray) -> np.ndarray:
        a, b = pair
        numbers = np.asarray(numbers, dtype=np.int64)
        if len(numbers) and int(numbers.max()) >= np.iinfo(np.int64).max // modulus:
            raise ValueError(f"id space exhausted: {int(numbers.max())} does not fit modulus {modulus}")
        return (a * numbers + b) % modulus


@dataclass
class _Counters:
    """Sequential numbers carried from block to block so that ids stay unique."""

    accounts: list[int] = field(default_factory=lambda: [0, 0, 0])
    txns: list[int] = field(default_factory=lambda: [0, 0, 0])
    cases: list[int] = field(default_factory=lambda: [0, 0, 0])
    loans: int = 0
    patterns: int = 0


def _split(total: int, sizes: list[int]) -> list[int]:
    """Split a count over blocks in proportion to their sizes (largest remainder, deterministic)."""
    exact = np.array(sizes, dtype=np.float64) * total / sum(sizes)
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts.tolist()


# --------------------------------------------------------------------------------------------
# Memo vocabulary, flattened so that a memo head is one integer per transaction
# --------------------------------------------------------------------------------------------


def _memo_vocabulary() -> tuple[pa.Array, np.ndarray, np.ndarray]:
    heads: list[str] = []
    start = np.zeros((len(vocab.CATEGORIES), len(REGIONS)), dtype=np.int64)
    length = np.zeros_like(start)
    for c, category in enumerate(vocab.CATEGORIES):
        for r, region in enumerate(REGIONS):
            words = vocab.MEMO_HEADS[category][region]
            start[c, r], length[c, r] = len(heads), len(words)
            heads.extend(words)
    return _strings(heads), start, length


_MEMO_HEADS, _MEMO_START, _MEMO_LEN = _memo_vocabulary()

# Memo detail after the head: none, "dd/mm", month name, "inv NNNN", "ref NNNNNN" ("suspicious":
# that of a phrase of fedlake.synth.memos).
_DETAIL_P = {
    "card": (0.5, 0.5, 0.0, 0.0, 0.0),
    "monthly": (0.25, 0.0, 0.65, 0.0, 0.1),
    "transfer": (0.6, 0.1, 0.1, 0.0, 0.2),
    "refund": (0.6, 0.4, 0.0, 0.0, 0.0),
    "cash": (0.8, 0.2, 0.0, 0.0, 0.0),
    "suspicious": (0.25, 0.1, 0.05, 0.45, 0.15),
}
_CATEGORY_DETAIL = {
    "groceries": "card", "restaurants": "card", "travel": "card", "shopping": "card", "health": "card",
    "entertainment": "card", "gambling": "card", "utilities": "monthly", "rent": "monthly",
    "salary": "monthly", "transfer": "transfer", "refund": "refund", "cash_advance": "cash",
    "cash_withdrawal": "cash", "cash_deposit": "cash",
}
_DETAIL_CDF = np.cumsum(
    np.array([_DETAIL_P[_CATEGORY_DETAIL[c]] for c in vocab.CATEGORIES] + [_DETAIL_P["suspicious"]]), axis=1
)

# Debit behaviour per category (DEBIT_CATEGORIES order): base weight, median EUR, log-sd,
# probability of booking it on a foreign account, probability of the online channel.
_D = {name: i for i, name in enumerate(vocab.DEBIT_CATEGORIES)}
_DEBIT_WEIGHT = np.array([0.22, 0.14, 0.05, 0.08, 0.05, 0.15, 0.05, 0.07, 0.0, 0.0, 0.07, 0.08])
_DEBIT_MEDIAN_EUR = np.array([45, 38, 320, 85, 950, 75, 40, 28, 90, 350, 150, 220], dtype=np.float64)
_DEBIT_SIGMA = np.array([0.6, 0.6, 0.8, 0.4, 0.25, 0.9, 0.8, 0.7, 1.1, 0.5, 0.6, 1.0])
_DEBIT_FOREIGN_P = np.array([0.2, 0.2, 0.35, 0.1, 0.05, 0.2, 0.15, 0.2, 0.85, 0.85, 0.2, 0.2])
_DEBIT_ONLINE_P = np.array([0.05, 0.05, 0.5, 0.0, 0.0, 0.4, 0.1, 0.5, 0.7, 0.0, 0.0, 0.0])
_CARD_CATEGORIES = np.array([_D[c] for c in ("groceries", "restaurants", "travel", "shopping", "health",
                                             "entertainment", "gambling")])
_MERCHANT_CATEGORIES = np.concatenate([_CARD_CATEGORIES, [_D["utilities"]]])
# Credits: salary, transfer, refund, cash deposit.
_CREDIT_WEIGHT = np.array([0.5, 0.3, 0.12, 0.08])
_CREDIT_CATEGORY = np.array([_CATEGORY_INDEX[c] for c in vocab.CREDIT_CATEGORIES])


# --------------------------------------------------------------------------------------------
# People and accounts
# --------------------------------------------------------------------------------------------


@dataclass
class _People:
    global_index: np.ndarray
    home: np.ndarray  # region index
    home_format: np.ndarray  # index into _HOME_FORMATS
    presence: np.ndarray  # (n, 3) bool
    eu_country: np.ndarray  # COUNTRIES index of the country of their EU accounts
    risk: np.ndarray
    age: np.ndarray
    employment_years: np.ndarray
    income: np.ndarray
    activity: np.ndarray
    employer_key: np.ndarray
    created_at: np.ndarray  # (n, 3) us

    def __len__(self) -> int:
        return len(self.global_index)


def _people(rng: np.random.Generator, global_index: np.ndarray) -> _People:
    n = len(global_index)
    rows = np.arange(n)
    home = rng.choice(3, size=n, p=HOME_SHARES)
    presence = np.zeros((n, 3), dtype=bool)
    presence[rows, home] = True
    u = rng.random(n)
    both = u < BOTH_OTHER_REGIONS_SHARE
    one = (u >= BOTH_OTHER_REGIONS_SHARE) & (u < BOTH_OTHER_REGIONS_SHARE + ONE_OTHER_REGION_SHARE)
    other = (home + 1 + rng.integers(0, 2, n)) % 3
    presence[rows[one], other[one]] = True
    presence[both] = True
    eu_home = rng.choice(len(vocab.EU_HOME_COUNTRIES), size=n, p=vocab.EU_HOME_WEIGHTS)
    home_format = np.select([home == 0, home == 1], [eu_home, _US_FORMAT], _SG_FORMAT)
    eu_country_codes = np.array([_COUNTRY_INDEX[c] for c in vocab.EU_HOME_COUNTRIES])
    abroad_eu = rng.choice(len(vocab.EU_HOME_COUNTRIES), size=n, p=vocab.EU_HOME_WEIGHTS)
    eu_country = eu_country_codes[np.where(home == 0, eu_home, abroad_eu)]
    risk = rng.standard_normal(n)
    age = np.clip(rng.normal(44, 13, n), 21, 79)
    employment = np.clip(np.round(rng.gamma(2.0, 4.5, n) - 1.2 * risk), 0, np.floor(age - 18)).astype(np.int64)
    median_income = np.array([42_000.0, 58_000.0, 52_000.0])[home]
    log_income = np.log(median_income) + 0.45 * rng.standard_normal(n) - 0.08 * risk + 0.012 * (employment - 9)
    income = np.maximum(np.round(np.exp(log_income), -2), 8_000.0)
    created_at = rng.integers(_CUSTOMER_EPOCH, _CUSTOMER_EPOCH_END, size=(n, 3))
    return _People(
        global_index=global_index,
        home=home,
        home_format=home_format,
        presence=presence,
        eu_country=eu_country,
        risk=risk,
        age=age,
        employment_years=employment,
        income=income,
        activity=rng.lognormal(-0.08, 0.4, n),
        employer_key=rng.integers(0, 2**62, n),
        created_at=created_at,
    )


@dataclass
class _Accounts:
    region: np.ndarray
    customer: np.ndarray  # row in _People
    kind: np.ndarray  # CHECKING / SAVINGS / CREDIT_CARD
    local: np.ndarray  # position among this block's accounts of the same region
    opened_at: np.ndarray
    country: np.ndarray  # COUNTRIES index of the account's country
    of: np.ndarray  # (n_people, 3 regions, 3 kinds) -> account row or -1

    def __len__(self) -> int:
        return len(self.region)


def _accounts(rng: np.random.Generator, people: _People) -> _Accounts:
    n = len(people)
    is_home = np.zeros((n, 3), dtype=bool)
    is_home[np.arange(n), people.home] = True
    risky = _sigmoid(people.risk)
    wants = {
        CHECKING: np.ones((n, 3)),
        SAVINGS: np.where(is_home, 0.45, 0.15),
        CREDIT_CARD: np.where(is_home, 0.35 + 0.3 * risky[:, None], 0.3 + 0.2 * risky[:, None]),
    }
    of = np.full((n, 3, 3), -1, dtype=np.int64)
    regions, customers, kinds, locals_ = [], [], [], []
    total = 0
    for r in range(3):
        local = 0
        for kind in (CHECKING, SAVINGS, CREDIT_CARD):
            holders = np.flatnonzero(people.presence[:, r] & (rng.random(n) < wants[kind][:, r]))
            of[holders, r, kind] = total + np.arange(len(holders))
            regions.append(np.full(len(holders), r))
            customers.append(holders)
            kinds.append(np.full(len(holders), kind))
            locals_.append(local + np.arange(len(holders)))
            total += len(holders)
            local += len(holders)
    region = np.concatenate(regions)
    customer = np.concatenate(customers)
    kind = np.concatenate(kinds)
    created = people.created_at[customer, region]
    wait = np.where(kind == CHECKING, rng.integers(0, _US_PER_HOUR, total), rng.random(total) * (_YEAR_START - created))
    country = np.select(
        [region == 0, region == 1], [people.eu_country[customer], _COUNTRY_INDEX["US"]], _COUNTRY_INDEX["SG"]
    )
    return _Accounts(
        region=region,
        customer=customer,
        kind=kind,
        local=np.concatenate(locals_),
        opened_at=(created + wait).astype(np.int64),
        country=country,
        of=of,
    )


# --------------------------------------------------------------------------------------------
# Transactions, as numpy columns until the very end
# --------------------------------------------------------------------------------------------

_TXN_FIELDS = (
    "region", "account", "ts", "amount", "credit", "category", "channel", "cp_kind", "cp_account",
    "cp_key", "cp_country", "memo_head", "pattern",
)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[name] for p in parts]) for name in _TXN_FIELDS}


def _memo_heads(rng: np.random.Generator, category: np.ndarray, region: np.ndarray) -> np.ndarray:
    return _MEMO_START[category, region] + np.floor(rng.random(len(category)) * _MEMO_LEN[category, region]).astype(
        np.int64
    )


def _timestamps_in_year(rng: np.random.Generator, month: np.ndarray) -> np.ndarray:
    span = _MONTH_STARTS[month + 1] - _MONTH_STARTS[month]
    return _MONTH_STARTS[month] + (rng.random(len(month)) * span).astype(np.int64)


def _foreign_region(rng: np.random.Generator, people: _People, person: np.ndarray) -> np.ndarray:
    """A random region, other than home, where each person banks (home if there is none)."""
    home = people.home[person]
    first, second = (home + 1) % 3, (home + 2) % 3
    has_first = people.presence[person, first]
    has_second = people.presence[person, second]
    pick_second = np.where(has_first & has_second, rng.random(len(person)) < 0.5, has_second)
    chosen = np.where(pick_second, second, first)
    return np.where(has_first | has_second, chosen, home)


def _counterparty_countries(
    rng: np.random.Generator, people: _People, accounts: _Accounts, account: np.ndarray, p_foreign: np.ndarray
) -> np.ndarray:
    """Domestic country of the account, or (with p_foreign) a country outside its region."""
    n = len(account)
    region = accounts.region[account]
    person = accounts.customer[account]
    domestic = accounts.country[account].copy()
    intra_eu = (region == 0) & (rng.random(n) < 0.1)
    domestic[intra_eu] = rng.choice([_COUNTRY_INDEX[c] for c in vocab.EU_MEMBER_STATES], size=intra_eu.sum())
    foreign_tables = [np.array([_COUNTRY_INDEX[c] for c in vocab.FOREIGN_COUNTRIES[r]]) for r in REGIONS]
    pick = rng.integers(0, len(foreign_tables[0]), n)
    abroad = np.choose(region, [table[pick] for table in foreign_tables])
    # Someone banking abroad often pays back home from that account.
    home_country = np.select(
        [people.home[person] == 0, people.home[person] == 1], [people.eu_country[person], _COUNTRY_INDEX["US"]],
        _COUNTRY_INDEX["SG"],
    )
    back_home = (people.home[person] != region) & (rng.random(n) < 0.5)
    abroad = np.where(back_home, home_country, abroad)
    return np.where(rng.random(n) < p_foreign, abroad, domestic)


def _normal_transactions(rng: np.random.Generator, people: _People, accounts: _Accounts) -> dict[str, np.ndarray]:
    n = len(people)
    risk = people.risk
    # When in the year each person spends: risky people spend in bursts (a peaked Dirichlet).
    month_weights = rng.gamma(np.repeat((2.5 * np.exp(-0.5 * risk))[:, None], 12, axis=1))
    month_cdf = np.cumsum(month_weights, axis=1)

    n_debit = rng.poisson(DEBITS_PER_YEAR * people.activity)
    debit_person = np.repeat(np.arange(n), n_debit)
    weights = np.tile(_DEBIT_WEIGHT, (n, 1))
    weights[:, _D["gambling"]] = 0.35 * _sigmoid(2.0 * (risk - 0.8))
    weights[:, _D["cash_advance"]] = 0.18 * _sigmoid(2.0 * (risk - 0.9))
    debit_kind = _pick_cdf(rng, np.cumsum(weights, axis=1)[debit_person])
    nd = len(debit_person)
    abroad = rng.random(nd) < _DEBIT_FOREIGN_P[debit_kind]
    debit_region = np.where(abroad, _foreign_region(rng, people, debit_person), people.home[debit_person])
    on_card = np.isin(debit_kind, _CARD_CATEGORIES) & (rng.random(nd) < 0.45)
    on_card |= debit_kind == _D["cash_advance"]
    to_savings = (debit_kind == _D["transfer"]) & (rng.random(nd) < 0.15)
    kind = np.select([on_card, to_savings], [CREDIT_CARD, SAVINGS], CHECKING)
    debit_account = accounts.of[debit_person, debit_region, kind]
    debit_account = np.where(debit_account >= 0, debit_account, accounts.of[debit_person, debit_region, CHECKING])
    debit_eur = np.exp(
        np.log(_DEBIT_MEDIAN_EUR[debit_kind])
        + _DEBIT_SIGMA[debit_kind] * (1 + 0.25 * np.maximum(risk[debit_person], 0)) * rng.standard_normal(nd)
    )
    debit_amount = debit_eur / _FX[debit_region]
    cash = np.isin(debit_kind, [_D["cash_withdrawal"], _D["cash_advance"]])
    # Cash comes in notes; everything else is rounded to cents.
    debit_amount = np.where(
        cash, np.maximum(np.round(debit_amount, -1), 20.0), np.maximum(np.round(debit_amount, 2), 1.0)
    )
    by_transfer = np.isin(debit_kind, [_D["utilities"], _D["rent"], _D["transfer"]])
    debit_channel = np.select(
        [cash, by_transfer, rng.random(nd) < _DEBIT_ONLINE_P[debit_kind]],
        [_CHANNEL_INDEX["atm"], _CHANNEL_INDEX["transfer"], _CHANNEL_INDEX["online"]],
        _CHANNEL_INDEX["card"],
    )
    p_cross = 0.03 + 0.35 * _sigmoid(1.8 * (risk[debit_person] - 1.0))
    p_cross = p_cross + 0.2 * (debit_region != people.home[debit_person]) + 0.3 * (debit_kind == _D["travel"])
    p_cross = p_cross + 0.2 * (debit_kind == _D["gambling"])
    debit_category = np.array([_CATEGORY_INDEX[c] for c in vocab.DEBIT_CATEGORIES])[debit_kind]
    debits = {
        "region": debit_region,
        "account": debit_account,
        "ts": _timestamps_in_year(rng, _pick_cdf(rng, month_cdf[debit_person])),
        "amount": debit_amount,
        "credit": np.zeros(nd, dtype=bool),
        "category": debit_category,
        "channel": debit_channel,
        "cp_kind": np.where(cash, _CP_NONE, _CP_EXTERNAL),
        "cp_account": np.full(nd, -1),
        "cp_country": _counterparty_countries(rng, people, accounts, debit_account, np.minimum(p_cross, 0.95)),
        "memo_head": _memo_heads(rng, debit_category, debit_region),
        "pattern": np.full(nd, -1),
    }
    debits["cp_key"] = _counterparty_keys(rng, people, debits, debit_person)

    n_credit = rng.poisson(CREDITS_PER_YEAR * people.activity)
    credit_person = np.repeat(np.arange(n), n_credit)
    nc = len(credit_person)
    credit_kind = _pick_cdf(rng, np.tile(np.cumsum(_CREDIT_WEIGHT), (nc, 1)))
    abroad = (credit_kind != 0) & (rng.random(nc) < 0.3)
    credit_region = np.where(abroad, _foreign_region(rng, people, credit_person), people.home[credit_person])
    kind = np.select(
        [(credit_kind == 1) & (rng.random(nc) < 0.3), (credit_kind == 2) & (rng.random(nc) < 0.5)],
        [SAVINGS, CREDIT_CARD],
        CHECKING,
    )
    credit_account = accounts.of[credit_person, credit_region, kind]
    credit_account = np.where(credit_account >= 0, credit_account, accounts.of[credit_person, credit_region, CHECKING])
    credit_eur = np.select(
        [credit_kind == 0, credit_kind == 1, credit_kind == 2],
        [
            people.income[credit_person] / 12 * rng.uniform(0.95, 1.05, nc),
            rng.lognormal(np.log(300), 1.0, nc),
            rng.lognormal(np.log(40), 0.8, nc),
        ],
        np.minimum(rng.lognormal(np.log(400), 0.8, nc), 8_000.0),
    )
    credit_amount = np.maximum(np.round(credit_eur / _FX[credit_region], 2), 1.0)
    is_cash = credit_kind == 3
    credit_amount = np.where(is_cash, np.maximum(np.round(credit_amount, -1), 10.0), credit_amount)
    credit_category = _CREDIT_CATEGORY[credit_kind]
    p_cross = np.where(
        credit_kind == 0,
        0.02,
        0.02 + 0.15 * _sigmoid(risk[credit_person] - 1.0) + 0.25 * (credit_region != people.home[credit_person]),
    )
    credits = {
        "region": credit_region,
        "account": credit_account,
        "ts": _timestamps_in_year(rng, _pick_cdf(rng, month_cdf[credit_person])),
        "amount": credit_amount,
        "credit": np.ones(nc, dtype=bool),
        "category": credit_category,
        "channel": np.select(
            [is_cash, credit_kind == 2], [_CHANNEL_INDEX["cash"], _CHANNEL_INDEX["card"]], _CHANNEL_INDEX["transfer"]
        ),
        "cp_kind": np.where(is_cash, _CP_NONE, _CP_EXTERNAL),
        "cp_account": np.full(nc, -1),
        "cp_country": _counterparty_countries(rng, people, accounts, credit_account, p_cross),
        "memo_head": _memo_heads(rng, credit_category, credit_region),
        "pattern": np.full(nc, -1),
    }
    credits["cp_key"] = _counterparty_keys(rng, people, credits, credit_person)
    return _concat([debits, credits, _internal_transfers(rng, accounts, debits)])


def _counterparty_keys(
    rng: np.random.Generator, people: _People, txns: dict[str, np.ndarray], person: np.ndarray
) -> np.ndarray:
    """What identifies the counterparty behind an IBAN: a merchant, a landlord, an employer, anyone."""
    category = txns["category"]
    merchant = np.isin(category, [_CATEGORY_INDEX[vocab.DEBIT_CATEGORIES[k]] for k in _MERCHANT_CATEGORIES])
    merchant |= category == _CATEGORY_INDEX["refund"]
    return np.select(
        [merchant, category == _CATEGORY_INDEX["rent"], category == _CATEGORY_INDEX["salary"]],
        [txns["memo_head"], people.global_index[person] * 7 + 3, people.employer_key[person]],
        rng.integers(0, 2**62, len(category)),
    ).astype(np.uint64)


def _internal_transfers(
    rng: np.random.Generator, accounts: _Accounts, debits: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Turn some outgoing transfers into payments to the bank's own accounts, with the matching credit.

    Without these, an internal counterparty would only ever appear in laundering cycles and give
    them away.
    """
    transfer = debits["category"] == _CATEGORY_INDEX["transfer"]
    chosen = np.flatnonzero(transfer & (rng.random(len(transfer)) < INTERNAL_TRANSFER_SHARE))
    receiver = rng.integers(0, len(accounts), len(chosen))
    sender = debits["account"][chosen]
    receiver = np.where(receiver == sender, (receiver + 1) % len(accounts), receiver)
    debits["cp_kind"][chosen] = _CP_INTERNAL
    debits["cp_account"][chosen] = receiver
    debits["cp_country"][chosen] = accounts.country[receiver]
    receiver_region = accounts.region[receiver]
    eur = debits["amount"][chosen] * _FX[debits["region"][chosen]]
    category = np.full(len(chosen), _CATEGORY_INDEX["transfer"])
    return {
        "region": receiver_region,
        "account": receiver,
        "ts": np.minimum(debits["ts"][chosen] + rng.integers(60_000_000, 6 * _US_PER_HOUR, len(chosen)), _YEAR_END),
        "amount": np.maximum(np.round(eur / _FX[receiver_region], 2), 0.01),
        "credit": np.ones(len(chosen), dtype=bool),
        "category": category,
        "channel": np.full(len(chosen), _CHANNEL_INDEX["transfer"]),
        "cp_kind": np.full(len(chosen), _CP_INTERNAL),
        "cp_account": sender,
        "cp_key": np.zeros(len(chosen), dtype=np.uint64),
        "cp_country": accounts.country[sender],
        "memo_head": _memo_heads(rng, category, receiver_region),
        "pattern": np.full(len(chosen), -1),
    }


# --------------------------------------------------------------------------------------------
# Laundering patterns
# --------------------------------------------------------------------------------------------


@dataclass
class _Pattern:
    kind: str
    accounts: list[int]  # block account rows, in the order money moves
    rows: list[tuple]  # transaction rows in _TXN_FIELDS order, pattern index filled in later


def _pattern_row(accounts: _Accounts, account: int, ts: int, amount: float, credit: bool, category: str,
                 channel: str, cp_kind: int, cp_account: int, cp_key: int, cp_country: int) -> tuple:
    return (accounts.region[account], account, ts, amount, credit, _CATEGORY_INDEX[category],
            _CHANNEL_INDEX[channel], cp_kind, cp_account, cp_key, cp_country)


def _foreign_country(rng: np.random.Generator, region: int) -> int:
    countries = vocab.FOREIGN_COUNTRIES[REGIONS[region]]
    return _COUNTRY_INDEX[countries[rng.integers(len(countries))]]


def _mule(rng: np.random.Generator, people: _People, accounts: _Accounts, region: int | None = None,
          exclude: Collection[int] = ()) -> int:
    """The checking account of a random customer (in a given region and not excluded, if asked)."""
    if region is None:
        person = int(rng.integers(len(people)))
        return int(accounts.of[person, rng.choice(np.flatnonzero(people.presence[person])), CHECKING])
    candidates = np.setdiff1d(np.flatnonzero(people.presence[:, region]), np.fromiter(exclude, np.int64))
    if not len(candidates):
        raise ValueError(f"block too small: no customer left in {REGIONS[region]} to plant a pattern")
    return int(accounts.of[rng.choice(candidates), region, CHECKING])


def _start(rng: np.random.Generator, latest: str) -> int:
    return int(rng.integers(_YEAR_START + 4 * _US_PER_DAY, int(np.datetime64(latest, "us").astype(np.int64))))


def _structuring(rng: np.random.Generator, people: _People, accounts: _Accounts, knobs: LaunderingKnobs) -> _Pattern:
    """6-12 cash deposits just under the reporting threshold within about ten days."""
    account = _mule(rng, people, accounts, pattern_region(rng, "structuring", REGIONS, knobs))
    n = int(rng.integers(6, 13))
    times = np.sort(_start(rng, "2025-12-15") + rng.integers(0, 10 * _US_PER_DAY, n))
    amounts = 9_000.0 + 10.0 * rng.integers(0, 100, n)
    rows = [
        _pattern_row(accounts, account, int(t), float(a), True, "cash_deposit", "cash", _CP_NONE, -1, 0,
                     int(accounts.country[account]))
        for t, a in zip(times, amounts)
    ]
    return _Pattern("structuring", [account], rows)


def _pass_through(rng: np.random.Generator, people: _People, accounts: _Accounts, knobs: LaunderingKnobs) -> _Pattern:
    """A large credit from abroad, forwarded within 1-48 h minus a 1-8 % cut."""
    account = _mule(rng, people, accounts, pattern_region(rng, "pass_through", REGIONS, knobs))
    region = int(accounts.region[account])
    t0 = _start(rng, "2025-12-25")
    inflow = round(float(rng.uniform(20_000, 150_000)), 2)
    rows = [
        _pattern_row(accounts, account, t0, inflow, True, "transfer", "transfer", _CP_EXTERNAL, -1,
                     int(rng.integers(2**62)), _foreign_country(rng, region))
    ]
    n_out = int(rng.integers(2, 6))
    parts = rng.dirichlet(np.full(n_out, 2.0)) * inflow * rng.uniform(0.93, 0.985)
    times = np.sort(t0 + rng.integers(_US_PER_HOUR, 48 * _US_PER_HOUR, n_out))
    for t, part in zip(times, parts):
        country = _foreign_country(rng, region) if rng.random() < 0.6 else int(accounts.country[account])
        rows.append(
            _pattern_row(accounts, account, int(t), round(float(part), 2), False, "transfer",
                         str(rng.choice(["transfer", "online"])), _CP_EXTERNAL, -1, int(rng.integers(2**62)), country)
        )
    return _Pattern("pass_through", [account], rows)


def _cycle(rng: np.random.Generator, people: _People, accounts: _Accounts, knobs: LaunderingKnobs) -> _Pattern:
    """Money going round 3-5 of the bank's accounts in 2+ regions, losing 1-3 % per hop."""
    n = int(rng.integers(3, 6))
    regions = ring_regions(rng, n, REGIONS, knobs)
    ring: list[int] = []
    owners: set[int] = set()
    for r in regions:
        account = _mule(rng, people, accounts, int(r), owners)
        ring.append(account)
        owners.add(int(accounts.customer[account]))
    eur = float(rng.uniform(20_000, 120_000))
    t = _start(rng, "2025-12-01")
    rows = []
    for hop in range(n):
        sender, receiver = ring[hop], ring[(hop + 1) % n]
        if hop:
            eur *= 1 - rng.uniform(0.01, 0.03)
            t += int(rng.integers(_US_PER_DAY, 3 * _US_PER_DAY))
        sent = round(eur / _FX[accounts.region[sender]], 2)
        received = round(eur / _FX[accounts.region[receiver]], 2)
        rows.append(_pattern_row(accounts, sender, t, sent, False, "transfer", "transfer", _CP_INTERNAL, receiver, 0,
                                 int(accounts.country[receiver])))
        rows.append(_pattern_row(accounts, receiver, t + int(rng.integers(60_000_000, 1_800_000_000)), received, True,
                                 "transfer", "transfer", _CP_INTERNAL, sender, 0, int(accounts.country[sender])))
    return _Pattern("cross_border_cycle", ring, rows)


_PATTERN_MAKERS = {"structuring": _structuring, "pass_through": _pass_through, "cross_border_cycle": _cycle}


def _pattern_transactions(
    rng: np.random.Generator, patterns: list[_Pattern], accounts: _Accounts, lookalikes: list[Flow]
) -> dict[str, np.ndarray]:
    """The patterns' rows (pattern index last) and the honest look-alikes' (their code last)."""
    rows = [row + (i,) for i, p in enumerate(patterns) for row in p.rows]
    rows += [
        _pattern_row(accounts, f.account, f.ts, f.amount, f.credit, f.category, f.channel, _CP_KINDS[f.counterparty],
                     f.cp_account, f.cp_key, f.cp_country) + (f.code,)
        for f in lookalikes
    ]
    if not rows:
        return {name: np.zeros(0, dtype=np.uint64 if name == "cp_key" else np.int64) for name in _TXN_FIELDS}
    columns = list(zip(*rows))
    txns = {
        "region": np.array(columns[0], dtype=np.int64),
        "account": np.array(columns[1], dtype=np.int64),
        "ts": np.array(columns[2], dtype=np.int64),
        "amount": np.array(columns[3], dtype=np.float64),
        "credit": np.array(columns[4], dtype=bool),
        "category": np.array(columns[5], dtype=np.int64),
        "channel": np.array(columns[6], dtype=np.int64),
        "cp_kind": np.array(columns[7], dtype=np.int64),
        "cp_account": np.array(columns[8], dtype=np.int64),
        "cp_key": np.array(columns[9], dtype=np.uint64),
        "cp_country": np.array(columns[10], dtype=np.int64),
        "pattern": np.array(columns[11], dtype=np.int64),
    }
    txns["memo_head"] = _memo_heads(rng, txns["category"], txns["region"])
    return txns


# --------------------------------------------------------------------------------------------
# Arrow assembly
# --------------------------------------------------------------------------------------------


def _ibans(countries: pa.Array, country: np.ndarray, key: np.ndarray, salt: int) -> pa.Array:
    """IBAN-like strings: the same (counterparty, country) always gives the same account number."""
    with np.errstate(over="ignore"):
        mixed = (key.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
                 + country.astype(np.uint64) * np.uint64(0x632BE59BD9B4E019) + np.uint64(salt))
        mixed ^= mixed >> np.uint64(29)
    digits = (mixed % np.uint64(10**16)).astype(np.int64)
    return _join(_take(countries, country), _padded(2 + digits % 97, 2), _padded(digits, 16))


def _memos(rng: np.random.Generator, txns: dict[str, np.ndarray], ts: pa.Array) -> pa.Array:
    """The ordinary head of the category, or a phrase in the account's language (fedlake.synth.memos)."""
    n = len(txns["category"])
    phrase = memos.phrases(rng, txns["memo_style"], txns["account_country"])
    detail_class = np.where(txns["memo_style"] != STYLE_HEAD, len(vocab.CATEGORIES), txns["category"])
    detail = _pick_cdf(rng, _DETAIL_CDF[detail_class])
    details = pc.choose(
        pa.array(detail.astype(np.int8)),
        pa.nulls(n, pa.string()),
        pc.strftime(ts, format="%d/%m"),
        pc.utf8_lower(pc.strftime(ts, format="%B")),
        _join("inv ", _padded(rng.integers(1000, 10_000, n), 4)),
        _join("ref ", _padded(rng.integers(0, 1_000_000, n), 6)),
    )
    return _join(pc.coalesce(phrase, _take(_MEMO_HEADS, txns["memo_head"])), details, sep=" ")


def _transactions_table(
    rng: np.random.Generator, txns: dict[str, np.ndarray], account_ids: pa.Array, region: int, first_id: int,
    salt: int,
) -> pa.Table:
    n = len(txns["ts"])
    ts = _timestamps(txns["ts"])
    countries = _strings(vocab.COUNTRIES)
    internal = txns["cp_kind"] == _CP_INTERNAL
    counterparty = pc.if_else(
        pa.array(internal),
        _take(account_ids, np.where(internal, txns["cp_account"], 0)),
        _ibans(countries, txns["cp_country"], txns["cp_key"], salt),
    )
    counterparty = pc.if_else(pa.array(txns["cp_kind"] == _CP_NONE), pa.scalar(None, pa.string()), counterparty)
    return pa.table(
        {
            "txn_id": _ids(f"{REGIONS[region]}-T", first_id + np.arange(n), 10),
            "account_id": _take(account_ids, txns["account"]),
            "ts": ts,
            "amount": txns["amount"],
            "currency": _take(_strings([vocab.REGION_CURRENCY[REGIONS[region]]]), np.zeros(n)),
            "direction": _take(_strings(["debit", "credit"]), txns["credit"].astype(np.int64)),
            "counterparty_account": counterparty,
            "counterparty_country": _take(countries, txns["cp_country"]),
            "channel": _take(_strings(vocab.CHANNELS), txns["channel"]),
            "merchant_category": _take(_strings(vocab.CATEGORIES), txns["category"]),
            "memo": _memos(rng, txns, ts),
        },
        schema=_SCHEMAS["transactions"],
    )


def _choose_by_format(people: _People, by_format: list[pa.Array]) -> pa.Array:
    return pc.choose(pa.array(people.home_format.astype(np.int8)), *by_format)


def _person_strings(rng: np.random.Generator, people: _People, ids: _IdSpace) -> dict[str, pa.Array]:
    """National id, name, email, phone, postcode: the same for a person in every silo."""
    n = len(people)
    g = people.global_index

    def digits(width: int, low: int = 0) -> pa.Array:
        return _padded(rng.integers(low, 10**width, n), width)

    eu_number = _IdSpace.apply(ids.national[10**10], 10**10, g)
    ssn = _IdSpace.apply(ids.national[10**9], 10**9, g)
    nric = _IdSpace.apply(ids.national[10**7], 10**7, g)
    nric_digits = (nric[:, None] // 10 ** np.arange(6, -1, -1)) % 10
    nric_check = (nric_digits @ np.array([2, 7, 6, 5, 4, 3, 2])) % 11
    national_id = _choose_by_format(
        people,
        [_join(code, _padded(eu_number, 10)) for code in vocab.EU_HOME_COUNTRIES]
        + [
            _join(_padded(ssn // 10**6, 3), _padded(ssn // 10**4 % 100, 2), _padded(ssn % 10**4, 4), sep="-"),
            _join("S", _padded(nric, 7), _take(_strings(list("JZIHGFEDCBA")), nric_check)),
        ],
    )

    def pick(table: dict[str, tuple[str, ...]]) -> pa.Array:
        flat = [w for code in _HOME_FORMATS for w in table[code]]
        starts = np.cumsum([0] + [len(table[code]) for code in _HOME_FORMATS])[:-1]
        sizes = np.array([len(table[code]) for code in _HOME_FORMATS])
        fmt = people.home_format
        return _take(_strings(flat), starts[fmt] + rng.integers(0, 1 << 30, n) % sizes[fmt])

    first, last = pick(vocab.FIRST_NAMES), pick(vocab.LAST_NAMES)
    suffix = pc.if_else(
        pa.array(rng.random(n) < 0.5), _padded(rng.integers(1, 100, n), 2), pa.scalar(None, pa.string())
    )
    local_part = pc.utf8_lower(
        pc.replace_substring(_join(first, last, suffix, sep="."), pattern=" ", replacement="")
    )
    email = _join(local_part, pick(vocab.EMAIL_DOMAINS), sep="@")

    letters = _strings(list("ABCDEFGHJKLMNPRSTVWXZ"))
    phone = _choose_by_format(
        people,
        [
            _join("+49 15", digits(1), " ", digits(7)),
            _join("+33 6 ", digits(2), " ", digits(2), " ", digits(2), " ", digits(2)),
            _join("+31 6 ", digits(8)),
            _join("+34 6", digits(2), " ", digits(3), " ", digits(3)),
            _join("+39 3", digits(2), " ", digits(3), " ", digits(4)),
            _join("+1 (", _padded(rng.integers(201, 990, n), 3), ") ", _padded(rng.integers(200, 1000, n), 3), "-",
                  digits(4)),
            _join("+65 ", _take(_strings(["8", "9"]), rng.integers(0, 2, n)), digits(3), " ", digits(4)),
        ],
    )
    postcode = _choose_by_format(
        people,
        [
            _padded(rng.integers(1067, 99999, n), 5),
            _padded(rng.integers(1000, 95999, n), 5),
            _join(_padded(rng.integers(1000, 10000, n), 4), " ", _take(letters, rng.integers(0, len(letters), n)),
                  _take(letters, rng.integers(0, len(letters), n))),
            _padded(rng.integers(1000, 52999, n), 5),
            _padded(rng.integers(10, 98999, n), 5),
            _padded(rng.integers(1001, 99950, n), 5),
            _padded(rng.integers(10000, 829999, n), 6),
        ],
    )
    return {
        "national_id": national_id,
        "full_name": _join(first, last, sep=" "),
        "email": email,
        "phone": phone,
        "postcode": postcode,
    }


def _customers_table(people: _People, strings: dict[str, pa.Array], customer_ids: pa.Array, region: int) -> pa.Table:
    rows = np.flatnonzero(people.presence[:, region])
    dob_days = np.datetime64("2025-01-01", "D") - np.round(people.age * 365.25).astype("timedelta64[D]")
    return pa.table(
        {
            "customer_id": _take(customer_ids, rows),
            "national_id": _take(strings["national_id"], rows),
            "full_name": _take(strings["full_name"], rows),
            "email": _take(strings["email"], rows),
            "phone": _take(strings["phone"], rows),
            "date_of_birth": pa.array(dob_days[rows], pa.date32()),
            "postcode": _take(strings["postcode"], rows),
            "home_region": _take(_strings(REGIONS), people.home[rows]),
            "income": people.income[rows],
            "employment_years": people.employment_years[rows],
            "created_at": _timestamps(people.created_at[rows, region]),
        },
        schema=_SCHEMAS["customers"],
    )


def _loans(rng: np.random.Generator, people: _People, customer_ids: pa.Array, first_id: int) -> pa.Table:
    """Loans issued in Q1 2026 to customers with an EU relationship (defaulted still to be drawn)."""
    eligible = np.flatnonzero(people.presence[:, 0])
    count = (rng.random(len(eligible)) < 0.88).astype(np.int64) + (rng.random(len(eligible)) < 0.25)
    borrower = np.repeat(eligible, count)
    n = len(borrower)
    principal = np.clip(np.round(people.income[borrower] * rng.lognormal(np.log(0.35), 0.6, n), -2), 1_000, 250_000)
    risky = _sigmoid(people.risk[borrower])
    rate = np.round(0.035 + 0.03 * rng.random(n) + 0.02 * risky, 4)
    term = rng.choice([12, 24, 36, 48, 60], size=n, p=[0.1, 0.2, 0.3, 0.2, 0.2])
    issued = _LOAN_WINDOW_START + (rng.random(n) * _LOAN_WINDOW_DAYS * _US_PER_DAY).astype(np.int64)
    return pa.table(
        {
            "loan_id": _ids("EU-L", first_id + np.arange(n), 8),
            "customer_id": _take(customer_ids, borrower),
            "principal": principal,
            "rate": rate,
            "term_months": term.astype(np.int64),
            "purpose": _take(_strings(vocab.LOAN_PURPOSES), rng.integers(0, len(vocab.LOAN_PURPOSES), n)),
            "issued_at": _timestamps(issued),
        }
    )


def _block(
    rng: np.random.Generator, global_index: np.ndarray, quotas: dict[str, int], ids: _IdSpace, counters: _Counters,
    knobs: LaunderingKnobs,
) -> Block:
    people = _people(rng, global_index)
    accounts = _accounts(rng, people)
    patterns = [
        _PATTERN_MAKERS[kind](rng, people, accounts, knobs) for kind in PATTERNS_AT_SCALE_1 for _ in range(quotas[kind])
    ]
    lookalikes = lookalike_flows(rng, people, accounts, quotas, REGIONS, _FX, knobs)
    txns = _concat([_normal_transactions(rng, people, accounts), _pattern_transactions(rng, patterns, accounts, lookalikes)])
    txns["account_country"] = accounts.country[txns["account"]]
    is_transfer = txns["category"] == _CATEGORY_INDEX["transfer"]
    txns["memo_style"] = memo_styles(rng, txns["pattern"], is_transfer, len(patterns), knobs)
    strings = _person_strings(rng, people, ids)

    silo_tables: dict[str, dict[str, pa.Table]] = {}
    customer_ids_by_region: list[pa.Array] = []
    account_ids_by_region: list[pa.Array] = []
    pattern_txn_parts: list[tuple[np.ndarray, int, pa.Array]] = []
    for r, region in enumerate(REGIONS):
        customer_ids = _ids(f"{region}-C", _IdSpace.apply(ids.customer[r], 10**8, global_index), 8)
        customer_ids_by_region.append(customer_ids)
        in_region = accounts.region == r
        account_numbers = _IdSpace.apply(ids.account[r], 10**9, counters.accounts[r] + np.arange(in_region.sum()))
        counters.accounts[r] += int(in_region.sum())
        # Indexed by block account row, so that any account (of any region) can be named.
        numbers = np.zeros(len(accounts), dtype=np.int64)
        numbers[in_region] = account_numbers[accounts.local[in_region]]
        account_ids = _ids(f"{region}-A", numbers, 9)
        account_ids_by_region.append(account_ids)

    all_account_ids = pc.choose(pa.array(accounts.region.astype(np.int8)), *account_ids_by_region)
    for r, region in enumerate(REGIONS):
        in_region = np.flatnonzero(accounts.region == r)
        mine = np.flatnonzero(txns["region"] == r)
        mine = mine[np.argsort(txns["ts"][mine], kind="stable")]
        region_txns = {name: values[mine] for name, values in txns.items()}
        table = _transactions_table(rng, region_txns, all_account_ids, r, counters.txns[r], ids.salt)
        counters.txns[r] += len(mine)
        laundering = np.flatnonzero(region_txns["pattern"] >= 0)
        laundering_ids = pc.take(table.column("txn_id"), pa.array(laundering))
        pattern_txn_parts.append((region_txns["pattern"][laundering], r, laundering_ids))
        silo_tables[region] = {
            "customers": _customers_table(people, strings, customer_ids_by_region[r], r),
            "accounts": pa.table(
                {
                    "account_id": _take(all_account_ids, in_region),
                    "customer_id": _take(customer_ids_by_region[r], accounts.customer[in_region]),
                    "account_type": _take(_strings(_ACCOUNT_TYPES), accounts.kind[in_region]),
                    "currency": _take(_strings([vocab.REGION_CURRENCY[region]]), np.zeros(len(in_region))),
                    "opened_at": _timestamps(accounts.opened_at[in_region]),
                },
                schema=_SCHEMAS["accounts"],
            ),
            "transactions": table,
        }

    truth = _aml_truth(rng, patterns, txns, accounts, all_account_ids, pattern_txn_parts, silo_tables, counters, knobs)

    loans = _loans(rng, people, customer_ids_by_region[0], counters.loans)
    counters.loans += len(loans)
    features = default_model.compute_default_features(silo_tables)
    loan_truth = default_model.true_default_probability(features, loans, silo_tables["EU"]["customers"])
    defaulted = rng.random(len(loans)) < loan_truth.column("true_pd").to_numpy()
    silo_tables["EU"]["loans"] = loans.append_column("defaulted", pa.array(defaulted)).cast(_SCHEMAS["loans"])
    truth["loan_truth"] = loan_truth
    return Block(silo_tables=silo_tables, truth=truth)


def _aml_truth(
    rng: np.random.Generator,
    patterns: list[_Pattern],
    txns: dict[str, np.ndarray],
    accounts: _Accounts,
    all_account_ids: pa.Array,
    pattern_txn_parts: list[tuple[np.ndarray, int, pa.Array]],
    silo_tables: dict[str, dict[str, pa.Table]],
    counters: _Counters,
    knobs: LaunderingKnobs,
) -> dict[str, pa.Table]:
    """Truth tables of the block's patterns, and the confirmed subset each silo's investigators hold."""
    pattern_ids = [f"P{counters.patterns + i:06d}" for i in range(len(patterns))]
    counters.patterns += len(patterns)
    laundering = txns["pattern"] >= 0
    started = np.full(len(patterns), np.iinfo(np.int64).max)
    ended = np.zeros(len(patterns), dtype=np.int64)
    np.minimum.at(started, txns["pattern"][laundering], txns["ts"][laundering])
    np.maximum.at(ended, txns["pattern"][laundering], txns["ts"][laundering])

    pattern_rows = {"pattern_id": [], "kind": [], "n_accounts": [], "regions": [], "started_at": []}
    account_rows = {"pattern_id": [], "region": [], "account": []}
    cases = {region: {"account": [], "kind": [], "opened": []} for region in REGIONS}
    for i, pattern in enumerate(patterns):
        regions = sorted({int(accounts.region[a]) for a in pattern.accounts})
        pattern_rows["pattern_id"].append(pattern_ids[i])
        pattern_rows["kind"].append(pattern.kind)
        pattern_rows["n_accounts"].append(len(pattern.accounts))
        pattern_rows["regions"].append(",".join(REGIONS[r] for r in regions))
        pattern_rows["started_at"].append(started[i])
        for account in pattern.accounts:
            region = REGIONS[accounts.region[account]]
            account_rows["pattern_id"].append(pattern_ids[i])
            account_rows["region"].append(region)
            account_rows["account"].append(account)
            if rng.random() < knobs.confirmation(region):
                cases[region]["account"].append(account)
                cases[region]["kind"].append(pattern.kind)
                cases[region]["opened"].append(ended[i] + int(rng.integers(3 * _US_PER_DAY, 45 * _US_PER_DAY)))

    for r, region in enumerate(REGIONS):
        found = cases[region]
        n = len(found["account"])
        silo_tables[region]["aml_cases"] = pa.table(
            {
                "case_id": _ids(f"{region}-K", counters.cases[r] + np.arange(n), 7),
                "account_id": _take(all_account_ids, np.array(found["account"], dtype=np.int64)),
                "pattern_kind": pa.array(found["kind"], pa.string()),
                "opened_at": _timestamps(np.array(found["opened"], dtype=np.int64)),
                "status": _take(_strings(["confirmed"]), np.zeros(n)),
            },
            schema=_SCHEMAS["aml_cases"],
        )
        counters.cases[r] += n

    id_array = _strings(pattern_ids) if pattern_ids else pa.array([], pa.string())
    txn_tables = [
        pa.table(
            {
                "pattern_id": _take(id_array, pattern_index),
                "region": _take(_strings(REGIONS), np.full(len(pattern_index), r)),
                "txn_id": txn_ids,
            },
            schema=_SCHEMAS["aml_pattern_transactions"],
        )
        for pattern_index, r, txn_ids in pattern_txn_parts
    ]
    return {
        "aml_patterns": pa.table(
            {
                "pattern_id": pa.array(pattern_rows["pattern_id"], pa.string()),
                "kind": pa.array(pattern_rows["kind"], pa.string()),
                "n_accounts": pa.array(pattern_rows["n_accounts"], pa.int64()),
                "regions": pa.array(pattern_rows["regions"], pa.string()),
                "started_at": _timestamps(np.array(pattern_rows["started_at"], dtype=np.int64)),
            },
            schema=_SCHEMAS["aml_patterns"],
        ),
        "aml_pattern_accounts": pa.table(
            {
                "pattern_id": pa.array(account_rows["pattern_id"], pa.string()),
                "region": pa.array(account_rows["region"], pa.string()),
                "account_id": _take(all_account_ids, np.array(account_rows["account"], dtype=np.int64)),
            },
            schema=_SCHEMAS["aml_pattern_accounts"],
        ),
        "aml_pattern_transactions": pa.concat_tables(txn_tables),
    }


def generate(scale: float, seed: int, block_customers: int = 20_000, knobs: LaunderingKnobs = DEFAULT_KNOBS) -> Iterator[Block]:
    """Stream the demo bank in equal blocks of at most block_customers people; `knobs` set how hard
    its laundering is to find (fedlake.synth.laundering).

    Deterministic for (scale, seed, block_customers): block b draws from
    SeedSequence([seed, b]) and ids come from counters carried across blocks.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if block_customers < MIN_BLOCK_CUSTOMERS:
        raise ValueError(f"block_customers must be at least {MIN_BLOCK_CUSTOMERS}, got {block_customers}")
    total = customer_count(scale)
    if total > MAX_CUSTOMERS:
        raise ValueError(f"scale {scale} needs {total} customers; national ids allow at most {MAX_CUSTOMERS}")
    # Equal blocks rather than a small remainder block, so every block can host its patterns.
    n_blocks = -(-total // block_customers)
    sizes = [total // n_blocks + (b < total % n_blocks) for b in range(n_blocks)]
    starts = np.cumsum([0] + sizes[:-1]).tolist()
    quotas = {kind: _split(count, sizes) for kind, count in expected_pattern_counts(scale).items()}
    ids = _IdSpace.from_seed(seed)
    counters = _Counters()
    for b, (start, size) in enumerate(zip(starts, sizes)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, b]))
        yield _block(rng, np.arange(start, start + size), {k: q[b] for k, q in quotas.items()}, ids, counters, knobs)
