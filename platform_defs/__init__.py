"""The Dagster entry point: `dagster dev -w workspace.yaml` loads `defs` from here."""

import dagster as dg

from platform_defs.definitions import build_definitions


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
