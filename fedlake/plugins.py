"""Which actions a deployment's silo agents serve beyond queries: the composition of plug-ins.

It lives outside `fedlake.agent` so that the agent imports neither Great Expectations nor torch:
each plug-in imports its package only when an agent is built with it. A served agent (`fedlake agent
serve`, the Dagster resources) gets `serving_plugins()`; the coordinator's in-process agents for a
one-off `fedlake query` get none, since a query needs none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from fedlake.agent.plugin import AgentPlugin, PluginContext

if TYPE_CHECKING:
    from fedlake.agent.agent import SiloAgent
    from fedlake.quality import QualitySuites

MODELS_FOLDER = Path("governed") / "models"  # the model registry, under the data folder

__all__ = ["AgentPlugin", "PluginContext", "learning_plugin", "quality_plugin", "serving_plugins"]


def quality_plugin(suites: QualitySuites | None = None) -> AgentPlugin:
    """`validate`: the expectation suites run in place. By default the suites are those declared in
    expectations/ next to the agent's silos.yaml."""

    def register(agent: SiloAgent, context: PluginContext) -> None:
        from fedlake.quality import load_suites, register_quality_actions

        register_quality_actions(agent, suites if suites is not None else load_suites(context.catalog.path, context.catalog))

    return register


def learning_plugin(registry: str | os.PathLike | None = None) -> AgentPlugin:
    """`train_round`, `evaluate_round` and the secure-aggregation stages, whose peer adverts are
    checked against the deployment's ledger public keys. `registry` is the model registry whose
    versions may be evaluated; by default the governed zone's, under the agent's data folder."""

    def register(agent: SiloAgent, context: PluginContext) -> None:
        from fedlake.learning.agent_actions import register_learning_actions

        register_learning_actions(agent, registry=registry if registry is not None else context.home / MODELS_FOLDER,
                                  peer_keys=context.home)

    return register


def serving_plugins() -> tuple[AgentPlugin, ...]:
    """Everything a long-lived agent serves next to its silo: data-quality validation and training."""
    return (quality_plugin(), learning_plugin())
