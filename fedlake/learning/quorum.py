"""The error of a round or an evaluation that too few silos answered."""

from __future__ import annotations

from fedlake.errors import FedlakeError


class QuorumError(FedlakeError):
    """Too few silos answered a round (or an evaluation) to go on."""

    def __init__(self, message: str, left_out: dict[str, str]):
        super().__init__(message)
        self.left_out = left_out
