"""A lake silo whose fragments run on Spark (`engine: spark`).

The lake stays what it is: the same folders, Delta or plain Parquet tables, the same atomic writes
and metadata. Only fragments change engine: the agent's masked statement is transpiled to Spark SQL
(spark_sql), run on the process's Spark session (spark_session) over views of exactly the Parquet
files of each table's current version (`LakeConnector.data_files`), and its result comes back as
Arrow record batches (`DataFrame.toArrow`: columnar from the executors, no pandas, no rows in
Python). The keys of the masks' HMACs are bound as Spark parameters, never written into the SQL.

What still runs next to the lake, on its own DuckDB: statistics and the planner's row estimates
(over the same files, cached per version), and in-silo writes (the lake's own atomic writer).

Spark reads the lake through Hadoop's filesystem, which in the shipped pyspark knows local paths
(and HDFS) but not S3: hadoop-aws is not shipped and nothing is downloaded at run time, so a
bucket silo cannot declare `engine: spark` (connector_for refuses it in one line).
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa

from fedlake.errors import ConfigError, SiloError
from fedlake.silos.base import REQUEST_SECONDS, Connector, MaterializedTable, TableStatistics, TableStats
from fedlake.silos.lake import LakeConnector
from fedlake.silos.spark_session import spark_session, valid_master
from fedlake.silos.spark_sql import parse_fragment, table_names, to_spark_sql


def spark_uri(uri: str, silo: str) -> str:
    """A data file's URI as Spark's Hadoop filesystem names it: local paths become file: URIs."""
    scheme = urlparse(uri).scheme
    if scheme in ("", "file") or len(scheme) == 1:  # a bare path (a one-letter scheme is a drive)
        return Path(uri.removeprefix("file://")).resolve().as_uri()
    raise SiloError(f"silo {silo}: Spark cannot read {scheme}:// files here (its {scheme} connector is not shipped)")


class SparkLake(Connector):
    """A lake connector whose fragments run on Spark; everything else is the lake's own. Methods
    beyond the Connector interface (Delta versions, data files) are the lake's, looked up on it."""

    engine = "spark"
    # The views live in the process's one session, so they are kept process-wide too.
    _views: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {}  # (silo, table) -> (its files, the view over them)
    _views_lock = threading.Lock()

    def __init__(self, lake: LakeConnector, master: str):
        super().__init__(lake.name, lake.region)
        self.lake = lake
        self.kind = lake.kind
        self.master = master

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "lake":
            raise AttributeError(name)
        return getattr(self.lake, name)

    # -- the Spark side ---------------------------------------------------------------------------

    def _view(self, session, table: str) -> str:
        """The temporary view over the table's current files, made once per version: its name
        carries the version, so a statement analysed against an older one never sees it replaced."""
        files = tuple(spark_uri(uri, self.name) for uri in self.lake.data_files(table))
        known = self._views.get((self.name, table))
        if known is not None and known[0] == files:
            return known[1]
        digest = hashlib.sha256("\n".join(files).encode()).hexdigest()[:12]
        view = f"fl_{self.name}_{table}_{digest}"
        if files:
            session.read.parquet(*files).createOrReplaceTempView(view)
        else:
            self.lake.schema(table)  # a table without files: the lake names what is missing
        if known is not None:
            session.catalog.dropTempView(known[1])
        self._views[(self.name, table)] = (files, view)
        return view

    def _dataframe(self, sql: str, params: dict | None):
        """The fragment analysed by Spark (no job runs yet)."""
        session = spark_session(self.master, self.name)  # imports pyspark first, once
        from pyspark.errors import PySparkException
        from py4j.protocol import Py4JError

        tree = parse_fragment(sql, self.name)
        present = set(self.lake.list_tables())
        args = {k: bytearray(v) if isinstance(v, bytes) else v for k, v in (params or {}).items()}
        try:
            with self._views_lock:
                views = {t: self._view(session, t) for t in table_names(tree) if t in present}
                return session, session.sql(to_spark_sql(tree, views, self.name), args=args or None)
        except (PySparkException, Py4JError) as exc:
            raise SiloError(f"silo {self.name}: {_first_line(exc)}") from None

    def _stream(self, sql: str, batch_rows: int, params: dict | None = None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        session, frame = self._dataframe(sql, params)
        from pyspark.errors import PySparkException
        from pyspark.sql.pandas.types import to_arrow_schema
        from py4j.protocol import Py4JError

        schema = to_arrow_schema(frame.schema, timezone="UTC")

        def batches() -> Iterator[pa.RecordBatch]:
            tag = f"fedlake-{uuid.uuid4().hex[:12]}"
            session.addTag(tag)  # the jobs this thread starts now; interrupted past the request limit
            deadline = threading.Timer(REQUEST_SECONDS, session.interruptTag, (tag,))
            deadline.daemon = True
            deadline.start()
            try:
                table = frame.toArrow()
            except (PySparkException, Py4JError) as exc:
                raise SiloError(f"silo {self.name}: streaming a fragment failed: {_first_line(exc)}") from None
            finally:
                deadline.cancel()
                session.removeTag(tag)
            if not table.schema.equals(schema):
                table = table.cast(schema)
            yield from table.to_batches(max_chunksize=batch_rows)

        return schema, batches()

    # -- the lake's own -----------------------------------------------------------------------------

    def list_tables(self) -> list[str]:
        return self.lake.list_tables()

    def schema(self, table: str) -> pa.Schema:
        return self.lake.schema(table)

    def statistics(self, table: str) -> TableStats:
        return self.lake.statistics(table)

    def row_count(self, table: str) -> int:
        return self.lake.row_count(table)

    def column_statistics(self, table: str) -> TableStatistics:
        return self.lake.column_statistics(table)

    def estimate_rows(self, sql: str, params: dict | None = None) -> int | None:
        """DuckDB's planner over the same files: Spark has no row estimate without computed statistics."""
        return self.lake.estimate_rows(sql, params)

    def materialize(self, table: str, sql: str, annotations: dict | None = None, params: dict | None = None) -> MaterializedTable:
        return self.lake.materialize(table, sql, annotations, params)

    def annotations(self, table: str) -> dict | None:
        return self.lake.annotations(table)

    def load(self, table: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
        return self.lake.load(table, schema, batches)

    def drop(self, table: str) -> None:
        self.lake.drop(table)

    def close(self) -> None:
        """The lake's own connections; the process's Spark session stays for the other silos."""
        self.lake.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


SPARK_SETTINGS = ("engine", "spark_master")


def spark_lake(name: str, settings: dict[str, str], open_lake: Callable[[dict[str, str]], Connector]) -> SparkLake:
    """The lake of `settings` (opened by `open_lake` without the engine's settings), its fragments on Spark."""
    where = f"silos.{name}.connection"
    if settings.get("bucket"):
        raise ConfigError("silos.yaml", f"{where}.engine", "engine: spark reads local lakes only: Spark's S3 connector "
                          "(hadoop-aws) is not shipped and no jar is fetched at run time; use engine: duckdb for a bucket")
    master = settings.get("spark_master", "")
    if not valid_master(master):
        raise ConfigError("silos.yaml", f"{where}.spark_master",
                          f"engine: spark needs spark_master: local[N], spark://host:port or sc://host:port, not {master!r}")
    lake = open_lake({k: v for k, v in settings.items() if k not in SPARK_SETTINGS})
    if not isinstance(lake, LakeConnector):
        raise ConfigError("silos.yaml", f"{where}.engine", "engine: spark runs a lake's fragments (kind s3 or parquet)")
    return SparkLake(lake, master)
