"""A query result as a terminal table: column names and types over the first rows, floats rounded
for display only. tabulate renders it; a CLI query imports nothing heavier."""

from __future__ import annotations

import pyarrow as pa
from tabulate import tabulate


def _cell(value: object) -> object:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "NULL" if value is None else value


def render_table(table: pa.Table, max_rows: int = 40, more: bool = False) -> str:
    """`more`: the query had rows beyond the table's, which were not fetched (--max-rows)."""
    shown = table.slice(0, max_rows).to_pylist()
    headers = [f"{field.name}\n{field.type}" for field in table.schema]
    rows = [[_cell(row[name]) for name in table.column_names] for row in shown]
    text = tabulate(rows, headers=headers, tablefmt="rounded_outline", disable_numparse=True)
    if more:
        text += f"\n{len(shown):,} rows shown; the query has more, not fetched (--max-rows to fetch more)"
    elif table.num_rows > max_rows:
        text += f"\n{table.num_rows:,} rows ({max_rows} shown; --max-rows to show more)"
    else:
        text += f"\n{table.num_rows:,} row{'s' if table.num_rows != 1 else ''}"
    return text
