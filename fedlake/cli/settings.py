"""What every verb reads the same way: the deployment, the catalog and the policy."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def deployment(args: argparse.Namespace) -> str:
    return args.deployment or os.environ.get("FEDLAKE_DEPLOYMENT", "local")


def catalog(args: argparse.Namespace):
    from fedlake.catalog import load_catalog

    return load_catalog(args.silos)


def policy(args: argparse.Namespace, loaded_catalog):
    """policies.yaml: --policies, else $FEDLAKE_POLICIES, else the one beside silos.yaml."""
    from fedlake.policy.model import POLICIES_ENV, load_policy

    path = args.policies or os.environ.get(POLICIES_ENV) or Path(args.silos).with_name("policies.yaml")
    return load_policy(path, loaded_catalog)
