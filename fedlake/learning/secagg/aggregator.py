"""The coordinator's side of secure aggregation: it routes keys and sealed shares, collects masked
updates, and learns their sum, never one silo's update.

One round runs four stages through the agents (see messages.py). A silo that drops is handled by
the stage it drops at:
- before advertising keys, or before sending its shares: it is simply not in the sum;
- after sending its shares but before its masked input: the survivors' masks still hold its
  pairwise masks, so the coordinator rebuilds its mask key from the survivors' shares and removes
  them (its update is not in the sum);
- after its masked input, during the unmasking: its update is in the sum; its self-mask seed is
  rebuilt from the other survivors' shares.
Whenever fewer than `threshold` silos are left at a stage, the round is refused in one line
(a QuorumError naming each missing silo and why), as a round below min_silos is.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedlake.agent.protocol import ProtocolError
from fedlake.errors import FedlakeError
from fedlake.learning.quorum import QuorumError
from fedlake.learning.secagg import keys, ring, shamir
from fedlake.learning.secagg.messages import (
    ADVERTISE_ACTION, MASK_FIELD, MASKED_FIELD, SHARE_KEYS_ACTION, UNMASK_ACTION,
    KeyAdvert, MaskedInput, MaskRequest, SealedShares, Setup, ShareKeys, Unmask, UnmaskShares,
)
from fedlake.learning.secagg.participant import mask_sign
from fedlake.learning.weights import Weights

Ask = Callable[[str, dict[str, dict[str, Any]]], tuple[dict[str, Any], dict[str, str], dict[str, float]]]
Quorum = Callable[[str, int, dict[str, str]], None]


@dataclass(frozen=True)
class SecAggConfig:
    """threshold: the fewest silos that must remain at every stage (None: more than half, and at
    least min_silos). frac_bits: the fixed-point precision of an update in the ring."""

    threshold: int | None = None
    frac_bits: int = ring.DEFAULT_FRAC_BITS

    def threshold_for(self, silos: int, min_silos: int) -> int:
        threshold = self.threshold if self.threshold is not None else max(min_silos, silos // 2 + 1)
        if not silos // 2 < threshold <= silos:
            raise ValueError(f"the secure-aggregation threshold must be above half of the {silos} silos and at most {silos}; got {threshold}")
        return threshold


@dataclass
class SecureOutcome:
    """What the coordinator learns: the survivors' other answers (metrics, epsilon; no weights),
    the sample-weighted mean of their updates and their total sample count."""

    answers: dict[str, dict[str, Any]]
    left_out: dict[str, str]
    seconds: dict[str, float]
    mean: Weights
    n_samples: int
    cost: dict[str, Any] = field(default_factory=dict)


def _size(value: Any) -> int:
    return len(json.dumps(value, default=str))


class SecureRound:
    def __init__(self, config: SecAggConfig, ask: Ask, quorum: Quorum, silos: list[str], min_silos: int, round_: int, session: str, purpose: str):
        self.config = config
        self.ask = ask
        self.quorum = quorum
        self.silos = sorted(silos)
        self.round = round_
        self.session = session
        self.purpose = purpose
        self.threshold = config.threshold_for(len(self.silos), min_silos)
        self.left_out: dict[str, str] = {}
        self.seconds: dict[str, float] = {}  # per silo: its call at the latest stage
        self.cost: dict[str, Any] = {"seconds": {}, "bytes_out": 0, "bytes_in": 0, "dropped_at": {}, "threshold": self.threshold,
                                     "masked_bytes": {}, "adverts_checked": {}}

    def _stage(self, stage: str, action: str, bodies: dict[str, dict[str, Any]], parse: Callable[[str, Any], Any]) -> dict[str, Any]:
        """One call to every silo still in; parsed answers of those that gave a usable one."""
        started = time.perf_counter()
        answers, left_out, seconds = self.ask(action, bodies)
        self.cost["bytes_out"] += sum(_size(b) for b in bodies.values())
        self.cost["bytes_in"] += sum(_size(a) for a in answers.values())
        parsed = {}
        for silo, answer in sorted(answers.items()):
            try:
                parsed[silo] = parse(silo, answer)
            except (FedlakeError, KeyError, TypeError, ValueError, binascii.Error) as exc:
                left_out[silo] = f"sent an unusable {stage} answer: {type(exc).__name__}: {exc}"
        for silo, why in left_out.items():
            self.left_out[silo] = why
            self.cost["dropped_at"][silo] = stage
        self.cost["seconds"][stage] = time.perf_counter() - started
        self.seconds = {silo: seconds[silo] for silo in parsed}
        self._check(stage, len(parsed))
        return parsed

    def _check(self, stage: str, remaining: int) -> None:
        self.quorum(f"round {self.round}", remaining, self.left_out)
        if remaining < self.threshold:
            reasons = "; ".join(f"{silo}: {why}" for silo, why in sorted(self.left_out.items()))
            raise QuorumError(
                f"round {self.round}, secure aggregation at '{stage}': {remaining} of {len(self.silos)} silos remain, fewer than "
                f"the threshold {self.threshold} needed to unmask the sum [{reasons}]; nothing of this round was aggregated",
                dict(self.left_out),
            )

    def run(self, layout: ring.Layout, train_action: str, train_bodies: dict[str, dict[str, Any]]) -> SecureOutcome:
        setup = Setup(self.session, self.round, self.silos, self.threshold, self.config.frac_bits, layout.size, self.purpose)

        def advert(silo: str, answer: Any) -> KeyAdvert:
            parsed = KeyAdvert.from_fields(answer)
            if parsed.silo != silo:
                raise ProtocolError(f"advert names {parsed.silo}")
            return parsed

        adverts = self._stage("advertise keys", ADVERTISE_ACTION, {s: setup.body() for s in self.silos}, advert)
        advertised = sorted(adverts)

        def sealed(silo: str, answer: Any) -> SealedShares:
            parsed = SealedShares.from_fields(answer)
            if parsed.silo != silo or sorted(parsed.sealed) != [s for s in advertised if s != silo]:
                raise ProtocolError(f"shares must come from {silo} for every other advertised silo")
            self.cost["adverts_checked"][silo] = parsed.checked
            return parsed

        request = ShareKeys(self.session, [adverts[s].body() for s in advertised], self.purpose)
        shares = self._stage("share keys", SHARE_KEYS_ACTION, {s: request.body() for s in advertised}, sealed)
        sharing = sorted(shares)

        def masked(silo: str, answer: Any) -> tuple[MaskedInput, np.ndarray, dict[str, Any]]:
            parsed = MaskedInput.from_fields(answer[MASKED_FIELD])
            if parsed.silo != silo:
                raise ProtocolError(f"masked input names {parsed.silo}")
            vector = ring.from_wire(base64.b64decode(parsed.vector, validate=True), layout.size)
            self.cost["masked_bytes"][silo] = _size(answer)
            return parsed, vector, {k: v for k, v in answer.items() if k != MASKED_FIELD}

        bodies = {
            v: {**train_bodies[v], MASK_FIELD: MaskRequest(self.session, {u: shares[u].sealed[v] for u in sharing if u != v}).body()}
            for v in sharing
        }
        inputs = self._stage("masked input", train_action, bodies, masked)
        seconds = self.seconds
        survivors = sorted(inputs)
        dropped = [s for s in sharing if s not in inputs]

        unmask = Unmask(self.session, survivors, dropped, {s: inputs[s][0].signature for s in survivors}, self.purpose)
        replies = self._stage("unmask", UNMASK_ACTION, {s: unmask.body() for s in survivors},
                              lambda silo, answer: UnmaskShares.from_fields(answer))

        started = time.perf_counter()
        total = self._unmasked_sum(layout, adverts, {s: inputs[s][1] for s in survivors}, dropped, list(replies.values()))
        mean, n_samples = layout.mean(ring.dequantize(total, self.config.frac_bits))
        self.cost["seconds"]["reconstruct"] = time.perf_counter() - started
        self.cost["participants"] = survivors
        return SecureOutcome({s: inputs[s][2] for s in survivors}, dict(self.left_out), seconds, mean, n_samples, self.cost)

    def _unmasked_sum(self, layout: ring.Layout, adverts: dict[str, KeyAdvert], vectors: dict[str, np.ndarray],
                      dropped: list[str], replies: list[UnmaskShares]) -> np.ndarray:
        """Sum of masked inputs, less each survivor's self-mask and the pairwise masks it shares
        with the silos that dropped after sending their shares."""
        total = np.zeros(layout.size, dtype=np.uint64)
        for vector in vectors.values():
            total = total + vector
        for silo in vectors:
            seed = shamir.combine([shamir.Share.from_hex(r.self_mask[silo]) for r in replies if silo in r.self_mask], self.threshold)
            total = total - ring.expand(seed, layout.size)
        for gone in dropped:
            raw = shamir.combine([shamir.Share.from_hex(r.mask_key[gone]) for r in replies if gone in r.mask_key], self.threshold)
            mask_key = keys.load_private(raw)
            if keys.public_hex(mask_key) != adverts[gone].mask_public:
                raise FedlakeError(f"round {self.round}: the mask key rebuilt for {gone} does not match its advert: a silo sent a bad share")
            for silo in vectors:
                pad = ring.expand(keys.pair_seed(mask_key, keys.load_public(adverts[silo].mask_public, silo), self.session), layout.size)
                total = total - pad if mask_sign(silo, gone) > 0 else total + pad
        return total
