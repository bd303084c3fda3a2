"""Secure aggregation, stage by stage, between real participants (a silo's side) and the
coordinator's rounds: the sum comes out exact, a single masked update looks like uniform noise
whatever the update, and a silo dropping at any stage is recovered while the threshold holds, or
refused in one line when it does not."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedlake.agent.agent import Caller
from fedlake.learning.aggregate import fedavg
from fedlake.learning.quorum import QuorumError
from fedlake.learning.secagg import SecAggConfig, SecAggRefused, SecureRound, keys, ring
from fedlake.learning.secagg.actions import masked_answer
from fedlake.learning.secagg.messages import ADVERTISE_ACTION, MASKED_FIELD, SHARE_KEYS_ACTION, UNMASK_ACTION, Setup, ShareKeys, Unmask
from fedlake.learning.secagg.participant import Participant

SILOS = ("eu_core", "sg_lake", "us_lake", "uk_lake")
TRAIN = "train_round"
COORDINATOR = Caller("coordinator", ("aml",), "EU", ("train",))


class Dropped(Exception):
    pass


class Silos:
    """Participants of real silos (own Ed25519 keys), answering the coordinator's calls in memory;
    `drop[silo] = action` makes that silo fail from that action on."""

    def __init__(self, updates: dict[str, tuple[dict[str, np.ndarray], int]], drop: dict[str, str] | None = None):
        self.signers = {silo: Ed25519PrivateKey.generate() for silo in updates}
        public = {silo: key.public_key() for silo, key in self.signers.items()}
        self.participants = {silo: Participant(silo, self.signers[silo], public.get, known_silos=frozenset(SILOS)) for silo in updates}
        self.updates = updates
        self.drop = drop or {}
        self.seen: dict[str, list[dict]] = {}  # action -> what the coordinator received
        self.dropped: set[str] = set()

    def handle(self, silo: str, action: str, body: dict):
        if self.drop.get(silo) == action or silo in self.dropped:
            self.dropped.add(silo)
            raise Dropped(f"{silo} went away")
        p = self.participants[silo]
        if action == ADVERTISE_ACTION:
            return p.advertise(COORDINATOR.identity, Setup.from_fields(body)).body()
        if action == SHARE_KEYS_ACTION:
            return p.share_keys(COORDINATOR.identity, ShareKeys.from_fields(body)).body()
        if action == UNMASK_ACTION:
            return p.unmask(COORDINATOR.identity, Unmask.from_fields(body)).body()
        weights, n = self.updates[silo]
        return masked_answer(p, COORDINATOR, body, weights, n, {}, None)

    def ask(self, action: str, bodies: dict[str, dict]):
        answers, left_out = {}, {}
        for silo, body in bodies.items():
            try:
                answers[silo] = self.handle(silo, action, body)
            except Dropped as exc:
                left_out[silo] = f"failed: {exc}"
        self.seen.setdefault(action, []).extend(answers.values())
        return answers, left_out, {silo: 0.0 for silo in answers}


def quorum(min_silos: int):
    def check(what: str, answered: int, left_out: dict[str, str]) -> None:
        if answered < min_silos:
            raise QuorumError(f"{what}: {answered} answered, fewer than min_silos={min_silos}", left_out)
    return check


def updates_of(rng: np.random.Generator, silos=SILOS, shape=(7, 5)) -> dict[str, tuple[dict[str, np.ndarray], int]]:
    return {s: ({"w": rng.normal(size=shape).astype(np.float32), "b": rng.normal(size=shape[0]).astype(np.float32)},
                int(rng.integers(50, 500))) for s in silos}


def secure_round(silos: Silos, min_silos: int = 2, config: SecAggConfig = SecAggConfig(), session: str = "s1"):
    layout = ring.Layout.of(next(iter(silos.updates.values()))[0])
    names = sorted(silos.updates)
    rnd = SecureRound(config, silos.ask, quorum(min_silos), names, min_silos, 1, session, "aml")
    return rnd.run(layout, TRAIN, {s: {"round": 1, "purpose": "aml"} for s in names})


def test_the_unmasked_sum_is_the_plain_sample_weighted_mean():
    updates = updates_of(np.random.default_rng(1))
    outcome = secure_round(Silos(updates))
    plain = fedavg(list(updates.values()))
    assert outcome.n_samples == sum(n for _, n in updates.values())
    for key in plain:
        np.testing.assert_allclose(outcome.mean[key], plain[key], rtol=0, atol=1e-6)
    assert sorted(outcome.answers) == sorted(SILOS) and outcome.left_out == {}
    # the coordinator never saw a weight or a sample count in the clear
    assert all(set(a) == {"metrics", "epsilon"} for a in outcome.answers.values())


@pytest.mark.parametrize("stage", [
    ADVERTISE_ACTION,   # before advertising keys: simply not in the round
    SHARE_KEYS_ACTION,  # after its keys were advertised, before its shares went out
    TRAIN,              # after the share distribution, before its masked input: its pairwise masks are removed
    UNMASK_ACTION,      # after its masked input, during the unmasking: its update stays in the sum
])
def test_one_silo_dropping_at_any_stage_is_recovered(stage):
    updates = updates_of(np.random.default_rng(2))
    silos = Silos(updates, drop={"sg_lake": stage})
    outcome = secure_round(silos)
    in_sum = [s for s in SILOS if s != "sg_lake"] if stage != UNMASK_ACTION else list(SILOS)
    plain = fedavg([updates[s] for s in in_sum])
    assert outcome.n_samples == sum(updates[s][1] for s in in_sum)
    for key in plain:
        np.testing.assert_allclose(outcome.mean[key], plain[key], rtol=0, atol=1e-6)
    assert "sg_lake" in outcome.left_out and "went away" in outcome.left_out["sg_lake"]


@pytest.mark.parametrize("stage", [ADVERTISE_ACTION, SHARE_KEYS_ACTION, TRAIN, UNMASK_ACTION])
def test_below_the_threshold_the_round_is_refused_in_one_line(stage):
    updates = updates_of(np.random.default_rng(3))
    silos = Silos(updates, drop={"sg_lake": stage, "us_lake": stage})  # 2 of 4 remain, threshold 3
    with pytest.raises(QuorumError) as refused:
        secure_round(silos, min_silos=2)
    message = str(refused.value)
    assert "\n" not in message and "fewer than the threshold 3 needed to unmask the sum" in message
    assert set(refused.value.left_out) == {"sg_lake", "us_lake"}


def uniformity_p(values: np.ndarray) -> float:
    """Kolmogorov-Smirnov p-value of ring elements against the uniform distribution on [0, 2^64)."""
    return stats.kstest(values.astype(np.float64) / 2.0**64, "uniform").pvalue


def masked_view(update: dict[str, np.ndarray], n: int) -> np.ndarray:
    """What the coordinator receives from eu_core in a round with two peers."""
    others = updates_of(np.random.default_rng(), silos=("sg_lake", "us_lake"), shape=update["w"].shape)
    silos = Silos({"eu_core": (update, n), **others})
    secure_round(silos, session="view")
    [mine] = [a for a in silos.seen[TRAIN] if a[MASKED_FIELD]["silo"] == "eu_core"]
    return np.frombuffer(base64.b64decode(mine[MASKED_FIELD]["vector"]), dtype="<u8")


def test_a_single_masked_update_is_indistinguishable_from_uniform_noise():
    update = {"w": np.full((64, 64), 0.25, dtype=np.float32), "b": np.zeros(64, dtype=np.float32)}
    view = masked_view(update, 100)
    assert uniformity_p(view) > 1e-4
    counts = np.bincount((view >> np.uint64(60)).astype(np.int64), minlength=16)  # top 4 bits: 16 cells
    assert stats.chisquare(counts).pvalue > 1e-4
    # the same tests see the update itself at once: they have the power to tell
    plain = ring.quantize(ring.Layout.of(update).flatten(update, 100), 24, 3)
    assert uniformity_p(plain) < 1e-12


@settings(max_examples=8, deadline=None)
@given(scale=st.floats(-1e3, 1e3, allow_nan=False), n=st.integers(1, 10_000), seed=st.integers(0, 2**32 - 1))
def test_changing_an_update_leaves_its_masked_view_distributed_the_same(scale, n, seed):
    rng = np.random.default_rng(seed)
    first = {"w": (rng.normal(size=(48, 48)) * scale).astype(np.float32), "b": np.zeros(48, dtype=np.float32)}
    second = {"w": np.full((48, 48), -scale, dtype=np.float32), "b": np.full(48, scale, dtype=np.float32)}
    a, b = masked_view(first, n), masked_view(second, n)
    assert stats.ks_2samp(a.astype(np.float64), b.astype(np.float64)).pvalue > 1e-5
    assert uniformity_p(a) > 1e-5 and uniformity_p(b) > 1e-5


def test_a_coordinator_cannot_swap_keys_or_replay_stages():
    updates = updates_of(np.random.default_rng(4), silos=("eu_core", "us_lake", "sg_lake"))
    silos = Silos(updates)
    eu, us = silos.participants["eu_core"], silos.participants["us_lake"]
    setup = Setup("s", 1, sorted(updates), 2, 24, ring.Layout.of(updates["eu_core"][0]).size, "aml")
    adverts = [silos.participants[s].advertise("coordinator", setup).body() for s in sorted(updates)]
    with pytest.raises(SecAggRefused, match="already open"):
        eu.advertise("coordinator", setup)
    # the coordinator puts its own mask key in the US advert: the signature no longer verifies
    forged = [dict(a) for a in adverts]
    us_advert = next(a for a in forged if a["silo"] == "us_lake")
    us_advert["mask_public"] = keys.public_hex(keys.RoundKeys.fresh().mask)
    with pytest.raises(keys.KeyCheckFailed, match="advert of us_lake: the signature does not verify"):
        eu.share_keys("coordinator", ShareKeys("s", forged, "aml"))
    # another client cannot drive this client's session; a threshold of half or less is refused
    with pytest.raises(SecAggRefused, match="no open session"):
        us.share_keys("analyst", ShareKeys("s", adverts, "aml"))
    with pytest.raises(SecAggRefused, match="above half"):
        us.advertise("coordinator", Setup("t", 1, sorted(updates), 1, 24, 10, "aml"))
    # nor can it add a party of its own (a Sybil), or mask one silo alone
    with pytest.raises(SecAggRefused, match=r"\['coordinator'\] are not silos of this deployment"):
        us.advertise("coordinator", Setup("u", 1, ["coordinator", "us_lake"], 2, 24, 10, "aml"))
    with pytest.raises(SecAggRefused, match="at least two distinct silos"):
        us.advertise("coordinator", Setup("v", 1, ["us_lake"], 1, 24, 10, "aml"))
