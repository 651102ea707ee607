"""The SparkSession every Spark job of a run shares (data cleaning, tokenizing into shards)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from lathe.core.config import Strict

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class SparkConfig(Strict):
    """The Spark session every Spark job of a run uses (section `spark`)."""

    master: str = Field("local[*]", description="local[*], spark://host:7077, k8s://https://..., or a Databricks master.")
    driver_memory: str = Field("4g", description="spark.driver.memory (the local executors live in the driver).")
    shuffle_partitions: int = Field(8, gt=0, description="spark.sql.shuffle.partitions.")
    conf: dict[str, str] = Field(default_factory=dict, description="Any further spark.* settings.")


def cds_archive() -> Path:
    """The driver JVM's class-data-sharing archive, beside this interpreter's packages (`make setup` writes it)."""
    return Path(sys.prefix) / "share" / "lathe" / "spark-driver.jsa"


def driver_java_options(dump_to: Path | None = None) -> str:
    """The driver JVM's options: lathe's log4j config, and the class-data-sharing archive when there is one.

    Spark's driver loads ~15,000 classes from ~300 jars on start; mapped from the archive instead, a
    session starts in 7 s instead of 13 on 2 cores and its first job in 3 s instead of 6 (measured with
    the JDK 17 `make setup` installs). ``dump_to``: record this JVM's classes into a new archive at exit.
    An archive that does not match this JVM or classpath is ignored, silently (the -Xlog settings).
    """
    log4j = Path(__file__).with_name("log4j2.properties")
    options = [f"-Dlog4j.configurationFile={log4j.as_uri()}", "-Xshare:auto", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]
    if dump_to is not None:
        options.append(f"-XX:ArchiveClassesAtExit={dump_to}")
    elif cds_archive().is_file():
        options.append(f"-XX:SharedArchiveFile={cds_archive()}")
    return " ".join(options)


def spark_session(cfg: SparkConfig, app_name: str = "lathe", java_options: str | None = None) -> SparkSession:
    """Get or create the session for ``cfg`` (local[*] by default; any Spark master works).

    Workers must run this interpreter (the venv's), or ``mapInPandas`` fails to import
    pyarrow in a system Python; loopback binding avoids DNS surprises on laptops and CI.
    ``java_options``: the driver JVM's options (default :func:`driver_java_options`); a
    `spark.driver.extraJavaOptions` in ``cfg.conf`` replaces them.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if cfg.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(cfg.master)
        .config("spark.driver.extraJavaOptions", java_options or driver_java_options())
        # Executors started on this machine (a standalone cluster's local workers) map the same archive for the
        # classes they share with the driver; on another machine its path does not exist, and the JVM starts as
        # it would without (no error, no log line).
        .config("spark.executor.extraJavaOptions", driver_java_options())
        .appName(app_name)
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.sql.parquet.compression.codec", "zstd")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        # Spark's progress bars help at a terminal and garble logs and CI output.
        .config("spark.ui.showConsoleProgress", str(sys.stderr.isatty()).lower())
        .config("spark.ui.enabled", "false")
    )
    for key, value in cfg.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def build_cds_archive(archive: Path) -> None:
    """Write the driver's class-data-sharing archive: a session runs the kinds of work lathe's stages do
    (pandas UDFs over Arrow, hashing, joins, aggregation, parquet with zstd), and its JVM records the
    classes it loaded as it exits. Written beside ``archive`` and renamed, so no session maps half a file."""
    import pandas as pd
    from pyspark.sql import functions as F

    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(f"{archive.name}.{os.getpid()}.partial")
    spark = spark_session(
        SparkConfig(master="local[2]", driver_memory="1g", shuffle_partitions=2), "lathe-cds", driver_java_options(partial)
    )
    rows = spark.createDataFrame(pd.DataFrame({"id": [str(i) for i in range(64)], "content": ["x = 1\n" * i for i in range(64)]}))
    annotated = rows.mapInPandas(
        lambda frames: (f.assign(n=f["content"].str.len()) for f in frames), "id string, content string, n long"
    )
    digests = annotated.withColumn("digest", F.sha2("content", 256)).withColumn("band", F.col("n") % 4)
    joined = digests.join(digests.groupBy("band").agg(F.count("*").alias("size")), "band")
    with tempfile.TemporaryDirectory() as scratch:
        joined.repartition("band").sortWithinPartitions("id").write.parquet(scratch + "/out", compression="zstd")
        spark.read.parquet(scratch + "/out").groupBy("band").agg(F.sum("n")).collect()
    gateway = spark.sparkContext._gateway
    assert gateway is not None
    jvm = gateway.proc  # the spark-submit pyspark launched, exec'd into java
    spark.stop()
    jvm.stdin.close()  # the gateway exits when its stdin closes, and dumps the archive as it does
    if jvm.wait(timeout=300) != 0 or not partial.is_file():
        raise RuntimeError(f"the driver JVM wrote no class-data-sharing archive to {partial} (exit {jvm.returncode})")
    partial.replace(archive)


if __name__ == "__main__":
    build_cds_archive(cds_archive())
    print(f"spark: class-data-sharing archive {cds_archive()} ({cds_archive().stat().st_size >> 20} MiB)")
