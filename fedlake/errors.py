"""Errors that fedlake raises on purpose: each says what is wrong, where, and what to do."""


class FedlakeError(Exception):
    """Base of every error fedlake raises deliberately."""


class ConfigError(FedlakeError):
    """A declarative file (silos.yaml, policies.yaml) is malformed; the message names file and key."""

    def __init__(self, path: str, key: str, problem: str):
        self.path = path
        self.key = key
        self.problem = problem
        super().__init__(f"{path}: {key}: {problem}")


class SiloError(FedlakeError):
    """A silo could not do what was asked (unreachable, unknown table, failed fragment)."""
