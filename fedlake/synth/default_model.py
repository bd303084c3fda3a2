"""The planted loan default model of the demo bank: features, formula, true probability.

A loan's default is drawn as Bernoulli(true_pd), with

    true_pd = sigmoid(z)
    z = INTERCEPT
        + 3.0  * dti                  (annual loan payment / annual income)
        + 0.3  * spending_volatility  (coefficient of variation of monthly debit spending)
        + 5.0  * gambling_share       (share of debit spending at gambling merchants)
        + 4.0  * cash_advance_share   (share of debit spending that is credit-card cash advance)
        + 2.5  * cross_border_share   (share of transactions with a foreign counterparty)
        - 0.03 * employment_years
    INTERCEPT = -4.5                  (about 12.5 % of loans default)

The person features are computed from ALL of the borrower's transactions in ALL regions, joined
by national_id, over calendar year 2025 (the behaviour window; loans are issued in Q1 2026):

- amounts are converted to EUR with the fixed table FX_TO_EUR (EUR 1.0, USD 0.92, SGD 0.68);
- spending_volatility: population standard deviation / mean of the 12 monthly sums of debit
  amounts in EUR (months without spending count as 0); 0 when the person spent nothing;
- gambling_share, cash_advance_share: EUR debit amount with merchant_category "gambling"
  (resp. "cash_advance") / all EUR debit amount; 0 when the person spent nothing;
- cross_border_share: transactions whose counterparty_country lies outside the account's region
  (EU: the 27 member states; US: US; SG: SG) / all transactions; a missing country (cash) is
  domestic; 0 when the person has no transactions;
- employment_years and income come from the customer record (the same in every silo).

The loan feature dti uses the amortization formula: the monthly payment of a loan of principal P
at annual rate r over n months is P * (r/12) / (1 - (1 + r/12) ** -n), times 12 for a year.

Why this shape: the generator gives every customer a latent risk that drives gambling, cash
advances, lumpy spending and cross-border payments, and routes most of a multi-region customer's
gambling and cash advances through their accounts abroad. A lender that sees only the EU silo
therefore sees a diluted version of these features and scores measurably worse than one that
uses compliant cross-silo features; the gap is the value of federation, and true_pd is the oracle.

The functions here are pure and take Arrow tables as they are stored in the silos, so the
generator and a test reading the seeded silos back compute exactly the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fedlake.synth.vocabulary import EU_MEMBER_STATES

FX_TO_EUR = {"EUR": 1.0, "USD": 0.92, "SGD": 0.68}

# Countries that count as domestic for an account held in each region.
REGION_COUNTRIES = {"EU": EU_MEMBER_STATES, "US": ("US",), "SG": ("SG",)}

INTERCEPT = -4.5
COEFFICIENTS = {
    "dti": 3.0,
    "spending_volatility": 0.3,
    "gambling_share": 5.0,
    "cash_advance_share": 4.0,
    "cross_border_share": 2.5,
    "employment_years": -0.03,
}
FEATURES = tuple(COEFFICIENTS)

WINDOW_START = np.datetime64("2025-01-01T00:00:00", "us")
WINDOW_END = np.datetime64("2026-01-01T00:00:00", "us")

PERSON_FEATURES_SCHEMA = pa.schema(
    [
        ("national_id", pa.string()),
        ("income", pa.float64()),
        ("employment_years", pa.int64()),
        ("n_transactions", pa.int64()),
        ("spending_volatility", pa.float64()),
        ("gambling_share", pa.float64()),
        ("cash_advance_share", pa.float64()),
        ("cross_border_share", pa.float64()),
    ]
)

LOAN_TRUTH_SCHEMA = pa.schema(
    [
        ("loan_id", pa.string()),
        ("national_id", pa.string()),
        ("true_pd", pa.float64()),
        ("annual_payment", pa.float64()),
        ("income", pa.float64()),
        ("dti", pa.float64()),
        ("spending_volatility", pa.float64()),
        ("gambling_share", pa.float64()),
        ("cash_advance_share", pa.float64()),
        ("cross_border_share", pa.float64()),
        ("employment_years", pa.int64()),
    ]
)


def _positions(values: pa.Array | pa.ChunkedArray, value_set: pa.Array) -> np.ndarray:
    """Row of each value in value_set, -1 where absent (a dangling reference)."""
    found = pc.index_in(values, value_set=value_set)
    return np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


def _array(table: pa.Table, column: str) -> pa.Array:
    return table.column(column).combine_chunks()


def _flags(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow column as numpy, null counting as False."""
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def compute_default_features(
    silos: Mapping[str, Mapping[str, pa.Table]],
    rates_to_eur: Mapping[str, float] = FX_TO_EUR,
    domestic: Mapping[str, Sequence[str]] = REGION_COUNTRIES,
) -> pa.Table:
    """Per-person behaviour features from the customers, accounts and transactions of some regions.

    `silos` maps a region ("EU", "US", "SG") to its tables by name; pass all regions for the
    federated view, or one for what a single silo can see. Returns one row per national_id found
    in any customers table, sorted by national_id, with PERSON_FEATURES_SCHEMA. Silos placed in
    other regions (fedlake.synth.layout) are keyed by silo name, with their declared money:
    `rates_to_eur` per currency and `domestic` countries per key of `silos`.
    """
    national_ids = pc.unique(
        pa.chunked_array(
            [silos[r]["customers"].column("national_id").combine_chunks() for r in silos], pa.string()
        ).combine_chunks()
    )
    national_ids = pc.take(national_ids, pc.array_sort_indices(national_ids))
    n = len(national_ids)
    income = np.zeros(n)
    employment = np.zeros(n, dtype=np.int64)
    monthly = np.zeros(n * 12)
    spend = np.zeros(n)
    gambling = np.zeros(n)
    cash_advance = np.zeros(n)
    n_txn = np.zeros(n)
    n_foreign = np.zeros(n)
    for region in silos:
        customers = silos[region]["customers"]
        accounts = silos[region]["accounts"]
        txns = silos[region]["transactions"]
        person_of_customer = _positions(customers.column("national_id"), national_ids)
        income[person_of_customer] = customers.column("income").to_numpy()
        employment[person_of_customer] = customers.column("employment_years").to_numpy()
        customer_of_account = _positions(accounts.column("customer_id"), _array(customers, "customer_id"))
        account_of_txn = _positions(txns.column("account_id"), _array(accounts, "account_id"))
        ts = txns.column("ts").to_numpy().astype("datetime64[us]")
        keep = (account_of_txn >= 0) & (ts >= WINDOW_START) & (ts < WINDOW_END)
        person = np.full(len(txns), -1, dtype=np.int64)
        person[keep] = person_of_customer[customer_of_account[account_of_txn[keep]]]
        keep &= person >= 0
        person = person[keep]
        currency = _positions(txns.column("currency"), pa.array(list(rates_to_eur)))
        rate = np.append(np.array(list(rates_to_eur.values())), np.nan)
        amount_eur = txns.column("amount").to_numpy()[keep] * rate[currency[keep]]
        debit = _flags(pc.equal(txns.column("direction"), "debit"))[keep]
        is_gambling = _flags(pc.equal(txns.column("merchant_category"), "gambling"))[keep]
        is_cash_advance = _flags(pc.equal(txns.column("merchant_category"), "cash_advance"))[keep]
        country = txns.column("counterparty_country")
        is_domestic = pc.is_in(country, value_set=pa.array(list(domestic[region]), pa.string()))
        foreign = _flags(pc.and_(pc.invert(is_domestic), pc.is_valid(country)))[keep]
        month = ts[keep].astype("datetime64[M]").astype(np.int64) % 12
        debit_eur = np.where(debit, amount_eur, 0.0)
        monthly += np.bincount(person * 12 + month, weights=debit_eur, minlength=n * 12)
        spend += np.bincount(person, weights=debit_eur, minlength=n)
        gambling += np.bincount(person, weights=np.where(is_gambling, debit_eur, 0.0), minlength=n)
        cash_advance += np.bincount(person, weights=np.where(is_cash_advance, debit_eur, 0.0), minlength=n)
        n_txn += np.bincount(person, minlength=n)
        n_foreign += np.bincount(person, weights=foreign.astype(np.float64), minlength=n)
    monthly = monthly.reshape(n, 12)
    mean = monthly.mean(axis=1)
    spent = spend > 0
    safe_mean = np.where(mean > 0, mean, 1.0)
    safe_spend = np.where(spent, spend, 1.0)
    return pa.table(
        {
            "national_id": national_ids,
            "income": income,
            "employment_years": employment,
            "n_transactions": n_txn.astype(np.int64),
            "spending_volatility": np.where(mean > 0, monthly.std(axis=1) / safe_mean, 0.0),
            "gambling_share": np.where(spent, gambling / safe_spend, 0.0),
            "cash_advance_share": np.where(spent, cash_advance / safe_spend, 0.0),
            "cross_border_share": np.where(n_txn > 0, n_foreign / np.maximum(n_txn, 1), 0.0),
        },
        schema=PERSON_FEATURES_SCHEMA,
    )


def annual_payment(principal: np.ndarray, rate: np.ndarray, term_months: np.ndarray) -> np.ndarray:
    """Twelve monthly installments of an amortizing loan (zero-rate loans repay linearly)."""
    monthly_rate = rate / 12.0
    with np.errstate(divide="ignore", invalid="ignore"):
        installment = principal * monthly_rate / (1.0 - (1.0 + monthly_rate) ** (-term_months))
    return 12.0 * np.where(monthly_rate > 0, installment, principal / term_months)


def linear_predictor(features: Mapping[str, np.ndarray]) -> np.ndarray:
    """z of the documented formula, from per-loan feature columns."""
    z = np.full(len(features["dti"]), INTERCEPT)
    for name, coefficient in COEFFICIENTS.items():
        z = z + coefficient * np.asarray(features[name], dtype=np.float64)
    return z


def true_default_probability(person_features: pa.Table, loans: pa.Table, customers: pa.Table) -> pa.Table:
    """The loan_truth rows: each loan's features and true_pd = sigmoid(z).

    `customers` is the EU customers table, which maps the loans' EU-local customer_id to the
    national_id that keys `person_features` (from compute_default_features).
    """
    customer = _positions(loans.column("customer_id"), _array(customers, "customer_id"))
    national_id = pc.take(customers.column("national_id"), pa.array(customer))
    person = _positions(national_id, _array(person_features, "national_id"))
    if (customer < 0).any() or (person < 0).any():
        raise ValueError("a loan references a customer absent from the customers or features table")
    take = pa.array(person)
    income = pc.take(person_features.column("income"), take).to_numpy()
    payment = annual_payment(
        loans.column("principal").to_numpy(),
        loans.column("rate").to_numpy(),
        loans.column("term_months").to_numpy().astype(np.float64),
    )
    behaviour = ("spending_volatility", "gambling_share", "cash_advance_share", "cross_border_share", "employment_years")
    columns = {name: pc.take(person_features.column(name), take).to_numpy() for name in behaviour}
    columns["dti"] = payment / income
    z = linear_predictor(columns)
    return pa.table(
        {
            "loan_id": loans.column("loan_id"),
            "national_id": national_id,
            "true_pd": 1.0 / (1.0 + np.exp(-z)),
            "annual_payment": payment,
            "income": income,
            **{name: columns[name] for name in LOAN_TRUTH_SCHEMA.names[5:]},
        },
        schema=LOAN_TRUTH_SCHEMA,
    )
