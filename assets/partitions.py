"""The partitions of fedlake's time-sliced assets, in one place.

Transactions arrive by the day, so the in-silo assets that summarise them are partitioned by day:
a day's partition is recomputed alone (a late correction, a backfill) without touching the others.
The first day is the start of the bank's transaction history that fedlake manages.
"""

import dagster as dg

TRANSACTIONS_SINCE = "2025-01-01"

daily_partitions = dg.DailyPartitionsDefinition(start_date=TRANSACTIONS_SINCE, timezone="UTC")
