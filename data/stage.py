"""The `data` stage: sources -> ingested parquet -> clean, deduplicated parquet + x-ray."""

from __future__ import annotations

from typing import Any, Protocol

from lathe.core.spark import SparkConfig, spark_session
from lathe.core.stage import Stage, StageContext, StageResult, json_summary
from lathe.data.config import DataConfig
from lathe.data.pipeline import clean_and_report, ingest
from lathe.data.xray import print_summary


class DataSections(Protocol):
    """The config sections the data stage reads."""

    data: DataConfig
    spark: SparkConfig


def run_data(ctx: StageContext[DataSections]) -> StageResult:
    """Ingest the configured sources, clean and deduplicate them, write the x-ray."""
    cfg = ctx.config.data
    spark = spark_session(ctx.config.spark, "lathe-data")
    ingested_dir = ctx.out_dir / "ingested"
    ctx.console.print(f"ingest: {', '.join(s.kind for s in cfg.sources)} -> {ingested_dir}")
    (
        ingest(spark, cfg, ctx.out_dir / "staging")
        .repartition("lang")
        .sortWithinPartitions("id")
        .write.mode("overwrite")
        .parquet(str(ingested_dir))
    )
    ingested = spark.read.parquet(str(ingested_dir))
    _, result = clean_and_report(ingested, cfg, ctx.out_dir, ctx.console)
    return result


def data_headline(manifest: dict[str, Any]) -> str:
    """Files in and kept, and the largest drop reasons."""
    drops = sorted(((k.split(".", 1)[1], int(v)) for k, v in manifest["metrics"].items() if k.startswith("dropped.") and v),
                   key=lambda x: -x[1])
    counts = manifest["counts"]
    return f"{counts['input']:,} files in, {counts['kept']:,} kept; dropped " + ", ".join(f"{k} {v}" for k, v in drops[:4])


DATA: Stage[Any] = Stage(
    name="data",
    inputs=(),
    section=lambda cfg: cfg.data,
    run=run_data,
    outputs={"clean": "kept", "dropped": "dropped", "xray": "xray/xray.json"},
    version="2",  # 2: PII precision fixes (OIDs, section anchors, placeholder credentials)
    summarize=json_summary("xray/xray.json", print_summary),
    headline=data_headline,
)
