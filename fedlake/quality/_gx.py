"""Great Expectations, set up so that it stays in the silo: no analytics, no data docs, no network.

GE is imported on first use (it takes seconds to import), with analytics switched off in the
environment before the import and again in the context's own config. The context is ephemeral
(in memory) and has no data docs site, so a validation writes nothing and fetches nothing.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedlake.quality.suites import Expectation


def gx_module() -> ModuleType:
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx

    return gx


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
