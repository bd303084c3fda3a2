"""Data quality in place: Great Expectations suites declared next to silos.yaml, run by each silo's
agent where the data lies; only validation results leave, with sample values only where the policy
lets them leave as they are."""

from fedlake.quality.actions import VALIDATE_ACTION, register_quality_actions
from fedlake.quality.suites import EXPECTATIONS_DIR, Expectation, QualitySuites, Suite, load_suites
from fedlake.quality.validate import DEFAULT_MAX_VALUES, QualityError, validate_in_place

__all__ = [
    "DEFAULT_MAX_VALUES",
    "EXPECTATIONS_DIR",
    "Expectation",
    "QualityError",
    "QualitySuites",
    "Suite",
    "VALIDATE_ACTION",
    "load_suites",
    "register_quality_actions",
    "validate_in_place",
]
