"""Great Expectations, set up so that it stays in the silo: no analytics, no data docs, no network.

GE is imported on first use (it takes seconds to import), with analytics switched off in the
environment before the import and again in the context's own config. The context is ephemeral
(in memory) and has no data docs site, so a validation writes nothing and fetches nothing.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedlake.quality.suites import Expectation


def gx_module() -> ModuleType:
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    _keep_spark_connect_out()
    import great_expectations as gx

    return gx


def _keep_spark_connect_out() -> None:
    """GE imports Spark Connect where pyspark is installed, and Spark Connect, imported in a process
    whose __main__ has neither a spec nor a file (`python -c`, the step processes Dagster spawns),
    takes itself for pyspark's doctest runner and calls sys.exit(0): the step dies without a word.
    fedlake never validates through Spark Connect, so in such a process GE is told it is absent."""
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__spec__", None) is None and not hasattr(main, "__file__"):
        sys.modules.setdefault("pyspark.sql.connect", None)


def ephemeral_context():
    """An in-memory GE context with analytics off, no data docs site and no progress bars."""
    gx = gx_module()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        data_docs_sites={},
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def gx_expectation(expectation: Expectation, index: int):
    """The GE Expectation object for a declared expectation (GE validates type and kwargs here)."""
    gx_module()
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    from fedlake.quality.suites import INDEX_META

    return ExpectationConfiguration(
        type=expectation.type,
        kwargs=dict(expectation.kwargs),
        meta={**expectation.meta, INDEX_META: index},
        notes=expectation.notes,
        description=expectation.description,
    ).to_domain_obj()
