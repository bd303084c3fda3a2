"""The one Spark session of a process, for the lake silos that declare `engine: spark`.

A Spark driver is heavy (a JVM, seconds to start), so it starts on the first fragment, not at
import or when the connector opens, and every Spark silo of the process shares it. The master is
the deployment's (`spark_master` in silos.yaml): `local[N]` runs the executors inside the agent's
own JVM; `spark://host:port` is a standalone cluster; `sc://host:port` is a Spark Connect server,
reached with the `pyspark.sql.connect` client. One process talks to one master: a second silo
naming another is refused, since Spark allows one SparkContext per process.

Nothing is fetched at run time: no `spark.jars.packages`, no Ivy. A local master binds only to
loopback and runs without the web UI; logs are kept to fatal errors, since engine text stays in
the silo's region and the agent reports failures by code and id.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedlake.catalog import SPARK_MASTER
from fedlake.errors import SiloError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Fragments are small next to what Spark is built for: few partitions after a shuffle, which
# adaptive execution coalesces further.
SHUFFLE_PARTITIONS = 4

_lock = threading.Lock()
_session: SparkSession | None = None
_master: str | None = None


def valid_master(master: str) -> bool:
    """`local`, `local[N]`, `local[*]`, `spark://host:port[,host:port]` or `sc://host:port[/;params]`."""
    return bool(SPARK_MASTER.fullmatch(master))


@dataclass(frozen=True)
class SparkStart:
    """How long this process's session took to start (the JVM and the driver), for the bench."""

    master: str
    seconds: float


_started: SparkStart | None = None


def started() -> SparkStart | None:
    return _started


def spark_session(master: str, silo: str) -> SparkSession:
    """The process's session on `master`, started on first use."""
    global _session, _master, _started
    with _lock:
        if _session is not None:
            if master != _master:
                raise SiloError(
                    f"silo {silo}: spark_master {master} differs from {_master}, which this process already "
                    f"runs Spark on (one Spark master per process: run this silo's agent in its own process)"
                )
            return _session
        began = time.perf_counter()
        _import_pyspark(silo)
        _session = _remote(master, silo) if master.startswith("sc://") else _classic(master, silo)
        _master = master
        _started = SparkStart(master, time.perf_counter() - began)
        return _session


def _import_pyspark(silo: str) -> None:
    """Every pyspark module fedlake uses, imported once under the lock: pyspark's modules import
    each other in cycles, and two threads importing them at once see half-made modules."""
    try:
        import py4j.protocol  # noqa: F401
        import pyspark.errors  # noqa: F401
        import pyspark.sql  # noqa: F401
        import pyspark.sql.pandas.types  # noqa: F401
    except ImportError:
        raise SiloError(f"silo {silo}: engine: spark needs pyspark (the `spark` extra: pip install 'fedlake[spark]')") from None


def _classic(master: str, silo: str) -> SparkSession:
    from pyspark.errors import PySparkException
    from pyspark.sql import SparkSession

    scratch = tempfile.mkdtemp(prefix="fedlake-spark-")  # Spark's own folders, none in the working directory
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    builder = (
        SparkSession.builder.master(master)
        .appName("fedlake-agent")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.log.structuredLogging.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(SHUFFLE_PARTITIONS))
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        # a fragment names tables, never files: no `parquet.`/any/path`` reads
        .config("spark.sql.runSQLOnFiles", "false")
        .config("spark.sql.warehouse.dir", os.path.join(scratch, "warehouse"))
        .config("spark.jars.ivy", os.path.join(scratch, "ivy"))
    )
    if master.startswith("local"):
        # the driver and its executors talk over loopback only
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
    try:
        session = builder.getOrCreate()
    except (PySparkException, OSError, RuntimeError) as exc:
        if "JAVA_GATEWAY_EXITED" in str(exc) or "JAVA_HOME" in str(exc) or isinstance(exc, FileNotFoundError):
            raise SiloError(
                f"silo {silo}: engine: spark needs a Java 17 runtime (Debian's openjdk-17-jre-headless; `make spark` "
                f"installs it) and none could start"
            ) from None
        raise SiloError(f"silo {silo}: cannot start Spark on {master}: {str(exc).splitlines()[0]}") from None
    session.sparkContext.setLogLevel("FATAL")
    return session


def _remote(master: str, silo: str) -> SparkSession:
    try:
        from pyspark.sql import SparkSession

        return SparkSession.builder.remote(master).appName("fedlake-agent").getOrCreate()
    except ImportError as exc:
        raise SiloError(
            f"silo {silo}: a Spark Connect master ({master}) needs the Connect client's packages "
            f"(pip install 'pyspark[connect]==4.3.0': grpcio-status, googleapis-common-protos, zstandard): {exc}"
        ) from None
