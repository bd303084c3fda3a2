"""The demo bank: a seeded generator of a global bank's silos with planted ground truth."""

from fedlake.synth.bank import REGION_TABLES, REGIONS, TRUTH_TABLES, Block, generate, schemas

__all__ = ["REGIONS", "REGION_TABLES", "TRUTH_TABLES", "Block", "generate", "schemas"]
