"""A query's result as the CLI hands it over: a table on the terminal, or CSV, JSON lines or
Parquet on stdout or in a file, streamed batch by batch and cut at --max-rows.

The planner is asked for one row more than --max-rows (see fedlake.cli.query), so the CLI knows
whether the query had more without fetching it; reading stops there and the stream is closed.
Only the terminal table rounds floats; the files carry every value as the query returned it. A
file is written beside its destination and renamed into place when complete, so a failed query
leaves no half-written file.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from fedlake.errors import FedlakeError

if TYPE_CHECKING:
    import pyarrow as pa

FORMATS = ("table", "csv", "json", "parquet")
TABLE_ROWS = 40  # --max-rows of a terminal table when none is given; files get every row


@dataclass
class Fetched:
    """What was read of a result: its rows and Arrow bytes, and whether the query had more."""

    rows: int = 0
    nbytes: int = 0
    more: bool = False


def fetch(reader: pa.RecordBatchReader, limit: int | None, fetched: Fetched) -> Iterator[pa.RecordBatch]:
    """The reader's batches up to `limit` rows; past it, one more row is looked for, then the stream closed."""
    try:
        for batch in reader:
            if limit is not None and fetched.rows + batch.num_rows > limit:
                batch = batch.slice(0, limit - fetched.rows)
                fetched.more = True
            fetched.rows += batch.num_rows
            fetched.nbytes += batch.nbytes
            if batch.num_rows:
                yield batch
            if fetched.more or (limit is not None and fetched.rows == limit and _has_more(reader)):
                fetched.more = True
                return
    finally:
        reader.close()


def _has_more(reader: pa.RecordBatchReader) -> bool:
    for batch in reader:
        if batch.num_rows:
            return True
    return False


def write_result(reader: pa.RecordBatchReader, fmt: str, output: Path | None, limit: int | None) -> Fetched:
    """Write the result in `fmt` to `output` (stdout when None); returns what was fetched."""
    fetched = Fetched()
    batches = fetch(reader, limit, fetched)
    if fmt == "table":
        import pyarrow as pa

        from fedlake.display import render_table

        table = pa.Table.from_batches(list(batches), schema=reader.schema)
        text = render_table(table, table.num_rows, more=fetched.more) + "\n"
        _write_text(output, lambda out: out.write(text))
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        def csv_out(out: IO[bytes]) -> None:
            with pacsv.CSVWriter(out, reader.schema) as writer:
                for batch in batches:
                    writer.write_batch(batch)

        _write_bytes(output, csv_out)
    elif fmt == "json":
        def json_out(out: IO[bytes]) -> None:
            for batch in batches:
                out.write("".join(json.dumps(row, default=_json_value, ensure_ascii=False) + "\n"
                                  for row in batch.to_pylist()).encode())

        _write_bytes(output, json_out)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        if output is None:
            raise FedlakeError("--format parquet writes a file: give --output FILE")

        def parquet_out(out: IO[bytes]) -> None:
            with pq.ParquetWriter(out, reader.schema) as writer:
                for batch in batches:
                    writer.write_batch(batch)

        _write_bytes(output, parquet_out)
    else:
        raise FedlakeError(f"unknown --format {fmt!r} (one of {', '.join(FORMATS)})")
    if fetched.more and (fmt != "table" or output is not None):
        print(f"fedlake: {fetched.rows:,} rows written; the query has more, not fetched (--max-rows {limit})", file=sys.stderr)
    return fetched


def _json_value(value: object) -> object:
    """What JSON has no type for: decimals and times as text, bytes as base64."""
    if isinstance(value, (decimal.Decimal, dt.date, dt.time, dt.timedelta)):
        return value.isoformat() if hasattr(value, "isoformat") else str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)


def _write_text(output: Path | None, write) -> None:
    if output is None:
        write(sys.stdout)
        return
    with _atomic(output) as out:
        write(_TextOut(out))


def _write_bytes(output: Path | None, write) -> None:
    if output is None:
        sys.stdout.flush()
        write(sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    with _atomic(output) as out:
        write(out)


class _TextOut:
    def __init__(self, out: IO[bytes]):
        self._out = out

    def write(self, text: str) -> None:
        self._out.write(text.encode())


@contextmanager
def _atomic(output: Path) -> Iterator[IO[bytes]]:
    """A file beside `output`, renamed onto it once written whole; removed if writing fails."""
    output = Path(output)
    if not output.parent.is_dir():
        raise FedlakeError(f"--output {output}: folder {output.parent} does not exist")
    if output.is_dir():
        raise FedlakeError(f"--output {output}: is a folder; name a file")
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        with open(partial, "wb") as out:
            yield out
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
