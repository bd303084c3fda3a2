"""Arrow types as the planner and the gate see them: the SQL type a column is qualified as, and about
how many bytes a value takes on the wire."""

from __future__ import annotations

import pyarrow as pa

from fedlake.policy.transforms import TOKEN_HEX_CHARS


def sql_type(t: pa.DataType) -> str:
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "DOUBLE"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    return "VARCHAR"


def arrow_width(t: pa.DataType) -> int:
    """Arrow bytes per value, about: fixed widths as they are; text as its offset and a typical
    length (a pseudonym is TOKEN_HEX_CHARS characters)."""
    if pa.types.is_boolean(t):
        return 1
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return 4 + TOKEN_HEX_CHARS
    try:
        return max(1, t.bit_width // 8)
    except ValueError:
        return 16
