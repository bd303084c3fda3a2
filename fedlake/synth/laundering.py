"""How the demo bank's laundering is made hard to find: the knobs, where patterns live, who
confirms them, and the honest customers who look like launderers.

A benchmark where every method finds every launderer says nothing about federation. Real
monitoring is hard for four reasons, and each is a knob of `LaunderingKnobs`:

- **Look-alikes.** For each laundering kind there are honest customers whose numbers look the
  same: cash businesses that deposit their takings just under the reporting threshold (like
  structuring), buyers of property abroad whose escrow forwards a large foreign credit within days
  (like pass-through), people moving their own savings round their accounts in several regions
  (like a cross-border cycle). Only subtle differences (how tight the amounts sit under the
  threshold, how much goes abroad, the fee lost per hop, the words of the memo) tell them apart.
- **Subtle text in the region's own language.** A laundering pattern has a cover story (a
  consulting fee, a loan repaid, goods delivered) in only some of its memos, written in the
  account's language (`fedlake.synth.memos`); honest customers write the same words now and then.
  A model that never saw German or Singaporean memos of laundering cannot read them.
- **Non-IID prevalence.** Each kind is planted mostly in some regions (structuring in the US,
  pass-through in Singapore, cycles through the EU), so a silo alone has few examples of most
  kinds and none of some.
- **Scarce labels.** Investigators confirm only some of the involved accounts (`aml_cases`), at a
  rate that differs by region; the full truth stays outside every silo.

Rings span regions: a cycle always goes through accounts in at least two regions, so each silo
sees only its own hops.

Transactions made here are `Flow`s, named in words (category, channel, counterparty kind); the
bank encodes them. A flow's `code` is -1 for an ordinary transaction, a LOOKALIKE code for a
look-alike's, or the index of the laundering pattern it belongs to (>= 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fedlake.synth import vocabulary as vocab

PATTERN_KINDS = ("structuring", "pass_through", "cross_border_cycle")
NORMAL = -1
# A look-alike's flows carry a code of its own (below NORMAL), so that nothing counts them as laundering.
LOOKALIKES = {"cash_business": -2, "property_escrow": -3, "own_accounts_ring": -4}
LOOKALIKE_OF = {"structuring": "cash_business", "pass_through": "property_escrow", "cross_border_cycle": "own_accounts_ring"}

# Memo styles: what a transaction's memo says (fedlake.synth.memos renders it in the account's language).
STYLE_HEAD, STYLE_COVER = 0, 1
STYLE_OF_LOOKALIKE = {code: 2 + i for i, code in enumerate(LOOKALIKES.values())}

_US_PER_HOUR = 3_600 * 1_000_000
_US_PER_DAY = 24 * _US_PER_HOUR
_YEAR_START = int(np.datetime64("2025-01-01T00:00:00", "us").astype(np.int64))
_YEAR_END = int(np.datetime64("2026-01-01T00:00:00", "us").astype(np.int64)) - 1
_COUNTRY_INDEX = {code: i for i, code in enumerate(vocab.COUNTRIES)}


@dataclass(frozen=True)
class LaunderingKnobs:
    """The difficulty of the demo bank's AML problem. Defaults are calibrated so that pooled
    training (the ceiling no regulator allows) is well short of perfect and a silo alone is
    measurably worse; see the README's federated learning benchmark."""

    # Where each kind is planted: weight of each region for the (first) account of a pattern, and
    # of each hop of a cycle. A region not listed weighs 1 / number of regions.
    region_prevalence: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: {
        "structuring": {"EU": 0.2, "US": 0.65, "SG": 0.15},
        "pass_through": {"EU": 0.2, "US": 0.1, "SG": 0.7},
        "cross_border_cycle": {"EU": 0.6, "US": 0.15, "SG": 0.25},
    })
    # Share of a pattern's accounts that the region's investigators confirm (the only labels).
    confirmation_p: Mapping[str, float] = field(default_factory=lambda: {"EU": 0.5, "US": 0.4, "SG": 0.3})
    default_confirmation_p: float = 0.4
    # Honest look-alikes planted per laundering pattern of the kind they resemble, in the same regions.
    lookalikes_per_pattern: float = 2.5
    # Share of cash businesses that keep every deposit under the threshold (as structuring does).
    careful_business_p: float = 0.6
    # Share of patterns with a cover story, and of such a pattern's transactions whose memo tells it.
    cover_story_p: float = 0.6
    cover_memo_p: float = 0.5
    # Honest transfers whose memo happens to use the same words (genuine consultants, real loans).
    honest_cover_p: float = 0.04
    # A look-alike's transactions whose memo says what it is (takings, purchase price, own account)...
    lookalike_memo_p: float = 0.5
    # ...and those that read like a cover story.
    lookalike_cover_p: float = 0.08

    def __post_init__(self) -> None:
        shares = {"careful_business_p": self.careful_business_p, "cover_story_p": self.cover_story_p,
                  "cover_memo_p": self.cover_memo_p, "honest_cover_p": self.honest_cover_p,
                  "lookalike_memo_p": self.lookalike_memo_p, "lookalike_cover_p": self.lookalike_cover_p,
                  "default_confirmation_p": self.default_confirmation_p, **{f"confirmation_p.{r}": p for r, p in self.confirmation_p.items()}}
        bad = {name: p for name, p in shares.items() if not 0 <= p <= 1}
        if bad:
            raise ValueError(f"laundering knobs: shares must lie in [0, 1]; got {bad}")
        if self.lookalike_memo_p + self.lookalike_cover_p > 1:
            raise ValueError("laundering knobs: lookalike_memo_p + lookalike_cover_p must not exceed 1")
        if self.lookalikes_per_pattern < 0:
            raise ValueError(f"laundering knobs: lookalikes_per_pattern must be >= 0, got {self.lookalikes_per_pattern}")
        for kind, weights in self.region_prevalence.items():
            if kind not in PATTERN_KINDS:
                raise ValueError(f"laundering knobs: region_prevalence.{kind}: unknown kind (known: {', '.join(PATTERN_KINDS)})")
            if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
                raise ValueError(f"laundering knobs: region_prevalence.{kind} needs weights >= 0, one of them positive")

    def region_weights(self, kind: str, regions: tuple[str, ...]) -> np.ndarray:
        listed = self.region_prevalence.get(kind, {})
        weights = np.array([listed.get(r, 1.0 / len(regions)) for r in regions], dtype=np.float64)
        return weights / weights.sum()

    def confirmation(self, region: str) -> float:
        return self.confirmation_p.get(region, self.default_confirmation_p)


DEFAULT_KNOBS = LaunderingKnobs()


class People(Protocol):
    presence: np.ndarray  # (n, regions) bool

    def __len__(self) -> int: ...


class Accounts(Protocol):
    region: np.ndarray
    country: np.ndarray
    of: np.ndarray  # (people, regions, kinds) -> account row or -1


CHECKING = 0  # the account kind of the bank's first column of Accounts.of


@dataclass(frozen=True)
class Flow:
    """One transaction of a look-alike, in words; the bank turns it into a row."""

    account: int
    ts: int
    amount: float
    credit: bool
    category: str
    channel: str
    counterparty: str  # "external", "internal" or "none" (cash)
    cp_country: int  # index into vocabulary.COUNTRIES
    code: int
    cp_account: int = -1
    cp_key: int = 0


def pattern_region(rng: np.random.Generator, kind: str, regions: tuple[str, ...], knobs: LaunderingKnobs) -> int:
    """The region index where a pattern of this kind is planted."""
    return int(rng.choice(len(regions), p=knobs.region_weights(kind, regions)))


def ring_regions(rng: np.random.Generator, hops: int, regions: tuple[str, ...], knobs: LaunderingKnobs) -> np.ndarray:
    """The region of each account of a cycle, drawn by prevalence, such that every account sends
    money to or receives it from another region: each silo's piece of the ring crosses a border."""
    weights = knobs.region_weights("cross_border_cycle", regions)
    if (weights > 0).sum() < 2:
        raise ValueError("laundering knobs: region_prevalence.cross_border_cycle needs two regions or more with positive weight")
    while True:
        chosen = rng.choice(len(regions), size=hops, p=weights)
        if np.all((chosen != np.roll(chosen, 1)) | (chosen != np.roll(chosen, -1))):
            return chosen


def memo_styles(
    rng: np.random.Generator, code: np.ndarray, is_transfer: np.ndarray, n_patterns: int, knobs: LaunderingKnobs
) -> np.ndarray:
    """What each transaction's memo says: its ordinary head, a cover story, or a look-alike's own words."""
    n = len(code)
    u = rng.random(n)
    styles = np.full(n, STYLE_HEAD, dtype=np.int8)
    story = rng.random(max(n_patterns, 1)) < knobs.cover_story_p
    laundering = code >= 0
    styles[laundering & story[np.where(laundering, code, 0)] & (u < knobs.cover_memo_p)] = STYLE_COVER
    styles[(code == NORMAL) & is_transfer & (u < knobs.honest_cover_p)] = STYLE_COVER
    for lookalike, style in STYLE_OF_LOOKALIKE.items():
        mine = code == lookalike
        styles[mine & (u < knobs.lookalike_memo_p)] = style
        styles[mine & (u >= knobs.lookalike_memo_p) & (u < knobs.lookalike_memo_p + knobs.lookalike_cover_p)] = STYLE_COVER
    return styles


# --------------------------------------------------------------------------------------------
# Honest look-alikes
# --------------------------------------------------------------------------------------------


def _holder(rng: np.random.Generator, people: People, region: int, regions_needed: int = 1) -> int | None:
    """A random customer banking in `region` (and in at least `regions_needed` regions), or None."""
    candidates = np.flatnonzero(people.presence[:, region] & (people.presence.sum(axis=1) >= regions_needed))
    return int(rng.choice(candidates)) if len(candidates) else None


def _foreign_country(rng: np.random.Generator, region_name: str) -> int:
    countries = vocab.FOREIGN_COUNTRIES.get(region_name) or tuple(c for c in vocab.COUNTRIES if c not in ("US", "SG"))
    return _COUNTRY_INDEX[countries[rng.integers(len(countries))]]


def _cash_business(rng, people, accounts, region: int, regions: tuple[str, ...], fx: np.ndarray, knobs: LaunderingKnobs) -> list[Flow]:
    """A shop or restaurant depositing its takings in cash through the year; a careful one keeps
    every deposit under the reporting threshold, as structuring does, but over months, not days."""
    person = _holder(rng, people, region)
    if person is None:
        return []
    account = int(accounts.of[person, region, CHECKING])
    n = int(rng.integers(8, 25))
    if rng.random() < knobs.careful_business_p:
        amounts = 10.0 * rng.integers(750, 1000, n)
    else:
        amounts = np.clip(np.round(rng.lognormal(np.log(6_000), 0.5, n), -1), 500.0, 30_000.0)
    times = np.sort(rng.integers(_YEAR_START, _YEAR_END, n))
    country = int(accounts.country[account])
    code = LOOKALIKES["cash_business"]
    return [Flow(account, int(t), float(a), True, "cash_deposit", "cash", "none", country, code) for t, a in zip(times, amounts)]


def _property_escrow(rng, people, accounts, region: int, regions: tuple[str, ...], fx: np.ndarray, knobs: LaunderingKnobs) -> list[Flow]:
    """A large payment from abroad (a sale, an inheritance) paid on within days, mostly at home:
    a pass-through's shape, with less of it going abroad and more of it kept."""
    person = _holder(rng, people, region)
    if person is None:
        return []
    account = int(accounts.of[person, region, CHECKING])
    code = LOOKALIKES["property_escrow"]
    t0 = int(rng.integers(_YEAR_START + 4 * _US_PER_DAY, _YEAR_END - 10 * _US_PER_DAY))
    inflow = round(float(rng.uniform(20_000, 150_000)), 2)
    flows = [Flow(account, t0, inflow, True, "transfer", "transfer", "external", _foreign_country(rng, regions[region]), code,
                  cp_key=int(rng.integers(2**62)))]
    n_out = int(rng.integers(1, 4))
    parts = rng.dirichlet(np.full(n_out, 2.0)) * inflow * rng.uniform(0.85, 1.0)
    times = np.sort(t0 + rng.integers(2 * _US_PER_HOUR, 120 * _US_PER_HOUR, n_out))
    for t, part in zip(times, parts):
        country = _foreign_country(rng, regions[region]) if rng.random() < 0.25 else int(accounts.country[account])
        flows.append(Flow(account, int(t), round(float(part), 2), False, "transfer", "transfer", "external", country, code,
                          cp_key=int(rng.integers(2**62))))
    return flows


def _own_accounts_ring(rng, people, accounts, region: int, regions: tuple[str, ...], fx: np.ndarray, knobs: LaunderingKnobs) -> list[Flow]:
    """Someone moving their own savings from their account in one region to theirs in another and
    back: a cycle's shape through accounts in two or three regions, at a smaller loss per hop."""
    person = _holder(rng, people, region, regions_needed=2)
    if person is None:
        return []
    present = np.flatnonzero(people.presence[person])
    others = [int(r) for r in present if r != region]
    ring = [region, *rng.permutation(others)[: int(rng.integers(1, len(others) + 1))].tolist()]
    hops = [int(accounts.of[person, r, CHECKING]) for r in ring]
    code = LOOKALIKES["own_accounts_ring"]
    eur = float(rng.uniform(10_000, 100_000))
    t = int(rng.integers(_YEAR_START + 4 * _US_PER_DAY, _YEAR_END - 60 * _US_PER_DAY))
    flows: list[Flow] = []
    for hop in range(len(hops)):
        sender, receiver = hops[hop], hops[(hop + 1) % len(hops)]
        if hop:
            eur *= 1 - rng.uniform(0.002, 0.015)
            t += int(rng.integers(_US_PER_DAY, 6 * _US_PER_DAY))
        s_region, r_region = int(accounts.region[sender]), int(accounts.region[receiver])
        flows.append(Flow(sender, t, round(eur / fx[s_region], 2), False, "transfer", "transfer", "internal",
                          int(accounts.country[receiver]), code, cp_account=receiver))
        flows.append(Flow(receiver, t + int(rng.integers(60_000_000, 1_800_000_000)), round(eur / fx[r_region], 2), True,
                          "transfer", "transfer", "internal", int(accounts.country[sender]), code, cp_account=sender))
    return flows


_LOOKALIKE_MAKERS = {"cash_business": _cash_business, "property_escrow": _property_escrow, "own_accounts_ring": _own_accounts_ring}


def lookalike_flows(
    rng: np.random.Generator,
    people: People,
    accounts: Accounts,
    pattern_counts: Mapping[str, int],
    regions: tuple[str, ...],
    fx: np.ndarray,
    knobs: LaunderingKnobs,
) -> list[Flow]:
    """The honest look-alikes of a block: lookalikes_per_pattern for each planted pattern, in the
    regions where its kind is planted."""
    flows: list[Flow] = []
    for kind, count in pattern_counts.items():
        maker = _LOOKALIKE_MAKERS[LOOKALIKE_OF[kind]]
        for _ in range(int(round(knobs.lookalikes_per_pattern * count))):
            flows.extend(maker(rng, people, accounts, pattern_region(rng, kind, regions, knobs), regions, fx, knobs))
    return flows
