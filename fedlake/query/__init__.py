"""Federated SQL: one query over every silo, cut into per-silo fragments that run where the data
lies through the agents' gates, with what mixes silos run in DuckDB at the governed zone or, where
that moves fewer bytes and the policy allows, in one silo's agent."""

from fedlake.query.cut import Cut, Fragment, PlanningError, cut_query
from fedlake.query.execute import GOVERNED, FederatedPlan, Federation, FragmentRun
from fedlake.query.explain import render

__all__ = ["GOVERNED", "Cut", "FederatedPlan", "Federation", "Fragment", "FragmentRun", "PlanningError", "cut_query", "render"]
