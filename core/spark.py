"""The SparkSession every Spark job of a run shares (data cleaning, tokenizing into shards)."""

from __future__ import annotations

import os
import sys
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


def spark_session(cfg: SparkConfig, app_name: str = "lathe") -> SparkSession:
    """Get or create the session for ``cfg`` (local[*] by default; any Spark master works).

    Workers must run this interpreter (the venv's), or ``mapInPandas`` fails to import
    pyarrow in a system Python; loopback binding avoids DNS surprises on laptops and CI.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if cfg.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    log4j = Path(__file__).with_name("log4j2.properties")
    builder = (
        SparkSession.builder.master(cfg.master)
        .config("spark.driver.extraJavaOptions", f"-Dlog4j.configurationFile={log4j.as_uri()}")
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
