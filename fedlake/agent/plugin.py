"""The agent's extension point: a plug-in registers further actions on an agent as it is built.

The agent names no plug-in. Whoever builds it (a deployment's composition, a test) chooses which
plug-ins it serves, so a process that only queries never imports what validation or training need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from fedlake.catalog import Catalog

if TYPE_CHECKING:
    from fedlake.agent.agent import SiloAgent


@dataclass(frozen=True)
class PluginContext:
    """What the builder of an agent knows and a plug-in may need: the catalog (whose folder holds
    the expectation suites), the deployment and the data folder (where the model registry lives)."""

    catalog: Catalog
    deployment: str
    home: Path


class AgentPlugin(Protocol):
    """Registers its actions on the agent with `agent.register_action`; called once per agent built."""

    def __call__(self, agent: SiloAgent, context: PluginContext) -> None: ...
