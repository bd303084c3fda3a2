"""The audit ledger: an append-only record of every request, one signed hash chain per writer.

Each entry holds who asked, for what purpose, from which silo to which region, a hash of the
fragment, the decision for every output column, the rows and bytes that left, the privacy budget
spent and the error of a failed request. Every writer (an agent's silo, the coordinator, Dagster)
appends to its own chain: its entries are numbered from 1, each carries the hash of the one before
and an Ed25519 signature of its own hash. A hash chain alone can be recomputed by whoever can write
the table, so signatures make a rechained entry fail; and since nothing inside a chain shows that its
last entries were cut off, each writer's head (seq, hash) is witnessed in other chains and outside
the ledger. `verify` checks all of it and names the chain, the entry and what is missing.

`seq` numbers entries across the whole ledger (the order in which they were appended, also hashed),
`chain_seq` within their chain. Concurrent appends are group-committed: one transaction per batch.

    entry          an entry's fields, hash and seal
    budget         privacy budgets and the check made as a spend is recorded
    chain          placing a batch of entries on their chains in one transaction
    group_commit   batching concurrent appends, one commit per batch
    stores         the table in a DuckDB file or a PostgreSQL schema
    verify         checking chains, signatures and witnessed heads
    ledger         the Ledger object, and open_ledger
"""

from fedlake.audit.budget import NOT_SPENT, Budget, BudgetExceeded
from fedlake.audit.entry import FIELDS, GENESIS, LEGACY_CHAIN, LEGACY_FIELDS, entry_hash, fragment_hash
from fedlake.audit.ledger import DuckDBLedger, Ledger, PostgresLedger, open_ledger
from fedlake.audit.verify import Verification

__all__ = [
    "FIELDS",
    "GENESIS",
    "LEGACY_CHAIN",
    "LEGACY_FIELDS",
    "NOT_SPENT",
    "Budget",
    "BudgetExceeded",
    "DuckDBLedger",
    "Ledger",
    "PostgresLedger",
    "Verification",
    "entry_hash",
    "fragment_hash",
    "open_ledger",
]
