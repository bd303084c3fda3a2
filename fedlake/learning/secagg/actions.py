"""The agent's secure-aggregation actions, and the masked form of a training round's answer.

The three key-handling stages are actions of their own; the masked input rides on train_round,
which trains and then masks, so the update exists in the clear only inside the silo. What each
stage sends out (public keys, sealed shares, a masked vector, shares for the unmasking) is
ledgered and counted like any other egress.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedlake import signing
from fedlake.agent.agent import Caller, SiloAgent
from fedlake.learning.secagg.messages import (
    ADVERTISE_ACTION, MASK_FIELD, MASKED_FIELD, SHARE_KEYS_ACTION, UNMASK_ACTION, MaskRequest, Setup, ShareKeys, Unmask,
)
from fedlake.learning.secagg.participant import Participant, PeerKeys
from fedlake.learning.weights import Weights

SECAGG_RULE = "secure aggregation: public keys, sealed shares and masked updates only"

Admit = Callable[[Caller, dict[str, Any]], None]
Leave = Callable[[Caller, dict[str, Any], str, str, str, str, dict[str, Any]], dict[str, Any]]


def peer_key_source(peer_keys: str | os.PathLike | Mapping[str, Ed25519PublicKey] | None) -> PeerKeys | None:
    """Where an agent finds the public keys that check its peers' adverts: a mapping, a deployment
    data folder (its keys/ folder), or FEDLAKE_LEDGER_KEYS. None where none is configured."""
    if isinstance(peer_keys, Mapping):
        fixed = dict(peer_keys)
        return fixed.get
    if peer_keys is None and not os.environ.get(signing.PUBLIC_KEYS_ENV):
        return None
    home = Path(peer_keys) if peer_keys is not None else None
    known: dict[str, Ed25519PublicKey] = {}

    def lookup(silo: str) -> Ed25519PublicKey | None:
        if silo not in known:  # a silo whose agent started after this one: read the folder again
            known.update(signing.public_keys(home))
        return known.get(silo)

    return lookup


def register_secagg_actions(agent: SiloAgent, admit: Admit, leave: Leave, peer_keys: PeerKeys | None) -> Participant:
    """Serve the key-handling stages on `agent`; the returned participant masks train_round's answers.

    Without peer keys the adverts are signed but cannot be checked here: the round then resists a
    curious coordinator, not one that substitutes keys. Every deployment built with the learning
    plug-in has them."""
    participant = Participant(agent.spec.name, agent.ledger.signer, peer_keys or (lambda silo: None), verify=peer_keys is not None,
                              known_silos=frozenset(agent.policy.catalog.silos))

    def advertise(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        admit(caller, body)
        answer = participant.advertise(caller.identity, Setup.from_fields(body)).body()
        return leave(caller, body, ADVERTISE_ACTION, "public_keys", "allow", SECAGG_RULE, answer)

    def share_keys(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        admit(caller, body)
        answer = participant.share_keys(caller.identity, ShareKeys.from_fields(body)).body()
        return leave(caller, body, SHARE_KEYS_ACTION, "sealed_shares", "allow", SECAGG_RULE, answer)

    def unmask(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        admit(caller, body)
        answer = participant.unmask(caller.identity, Unmask.from_fields(body)).body()
        return leave(caller, body, UNMASK_ACTION, "unmask_shares", "allow", SECAGG_RULE, answer)

    agent.register_action(ADVERTISE_ACTION, advertise)
    agent.register_action(SHARE_KEYS_ACTION, share_keys)
    agent.register_action(UNMASK_ACTION, unmask)
    return participant


def masked_answer(participant: Participant, caller: Caller, body: dict[str, Any], weights: Weights, n_samples: int,
                  metrics: dict[str, Any], epsilon: float | None) -> dict[str, Any] | None:
    """train_round's answer under secure aggregation (the body carries a MaskRequest): the masked
    update in place of the weights and the sample count, which only the sum reveals. None when the
    round is not a secure one."""
    if MASK_FIELD not in body:
        return None
    started = time.perf_counter()
    masked = participant.mask(caller.identity, MaskRequest.from_fields(body[MASK_FIELD]), weights, n_samples)
    return {MASKED_FIELD: masked.body(), "metrics": {**metrics, "mask_seconds": time.perf_counter() - started}, "epsilon": epsilon}
