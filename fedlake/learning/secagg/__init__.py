"""Secure aggregation: the coordinator learns the sum of the silos' updates, not any one of them.

SecAgg (Bonawitz et al., CCS 2017), the protocol Flower's SecAgg+ builds on, over the full graph of
silos (a handful of regions, not thousands of phones): pairwise masks agreed by X25519, self masks,
Shamir shares of both seeds so that the round survives silos dropping while `threshold` remain,
and updates quantized into the ring Z/2^64 so that the masks cancel exactly.

    ring         fixed point in Z/2^64, the layout of a flat update, masks from seeds
    shamir       t-of-n sharing of 32-byte secrets
    keys         X25519 round keys, signed adverts, derived seeds and sealed channels
    messages     the typed messages of the four stages
    participant  a silo's state machine (in its agent)
    actions      the agent actions, and train_round's masked answer
    aggregator   the coordinator's stages, dropout recovery and the unmasked sum
"""

from fedlake.learning.secagg.aggregator import SecAggConfig, SecureOutcome, SecureRound
from fedlake.learning.secagg.participant import Participant, SecAggRefused

__all__ = ["Participant", "SecAggConfig", "SecAggRefused", "SecureOutcome", "SecureRound"]
