"""The `data` stage: sources -> ingested parquet -> clean, deduplicated parquet + x-ray."""

from __future__ import annotations

import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from rich.console import Console

from data.clean import CleanResult, clean_dataset, with_ids
from data.config import DataConfig
from data.sources import INGEST_SCHEMA, SOURCES
from data.spark import spark_session
from data.xray import print_summary, write_xray
from pipelines.stages import Stage, StageContext, StageResult, json_summary, register


def ingest(spark: SparkSession, cfg: DataConfig, staging: Path) -> DataFrame:
    """Union every configured source into the canonical schema, ids filled in."""
    frames = []
    for i, source in enumerate(cfg.sources):
        build = SOURCES.get(source.kind)
        frames.append(build(spark, source, cfg.max_file_bytes, cfg.partitions, staging / f"source-{i}"))
    df = frames[0]
    for other in frames[1:]:
        df = df.unionByName(other)
    return with_ids(df.select(*INGEST_SCHEMA.fieldNames()))


def clean_and_report(
    df: DataFrame, cfg: DataConfig, out_dir: Path, console: Console
) -> tuple[CleanResult, StageResult]:
    """Clean ``df`` into ``out_dir`` (kept/, dropped/, xray/) and print the x-ray summary."""
    t0 = time.perf_counter()
    result = clean_dataset(df, cfg, out_dir)
    seconds = time.perf_counter() - t0
    xray, artifacts = write_xray(result, out_dir / "xray")
    print_summary(xray, console)
    bytes_in = sum(r["bytes_in"] or 0 for r in xray["languages"])
    stage_result = StageResult(
        counts={"input": result.input_rows, "kept": result.kept_rows, "dropped": result.dropped_rows},
        metrics={
            **{f"dropped.{k}": float(v) for k, v in result.drop_reasons.items()},
            **{f"redacted.{k}": float(v) for k, v in result.redactions.items()},
            "clean_mb_per_s": bytes_in / 1e6 / seconds if seconds else 0.0,
        },
        artifacts=artifacts,
        details={"drop_reasons": result.drop_reasons, "redactions": result.redactions, "kept": str(out_dir / "kept")},
    )
    return result, stage_result


def run_data(ctx: StageContext) -> StageResult:
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


DATA = register(
    Stage(
        name="data",
        inputs=(),
        section=lambda cfg: cfg.data,
        run=run_data,
        version="2",  # 2: PII precision fixes (OIDs, section anchors, placeholder credentials)
        summarize=json_summary("xray/xray.json", print_summary),
    )
)
