"""Library functions of the data stage, shared with `lathe data clean`: ingest the sources,
clean a DataFrame into kept/dropped parquet, and report it (x-ray, stage figures)."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from rich.console import Console

from lathe.core.stage import StageResult
from lathe.data.clean import CleanResult, clean_dataset, with_ids
from lathe.data.config import DataConfig
from lathe.data.decontam import contamination_report, humaneval_index
from lathe.data.sources import INGEST_SCHEMA, SOURCES
from lathe.data.xray import print_summary, write_xray


def ingest(spark: SparkSession, cfg: DataConfig, staging: Path, as_of: datetime | None = None) -> DataFrame:
    """Union every configured source (as it was at ``as_of``, when given) into the canonical schema, ids filled in."""
    frames = []
    for i, source in enumerate(cfg.sources):
        build = SOURCES.get(source.kind)
        frames.append(build(spark, source, cfg.max_file_bytes, cfg.partitions, staging / f"source-{i}", as_of))
    df = frames[0]
    for other in frames[1:]:
        df = df.unionByName(other)
    return with_ids(df.select(*INGEST_SCHEMA.fieldNames()))


def clean_and_report(
    df: DataFrame, cfg: DataConfig, out_dir: Path, console: Console, previous_pool: Path | None = None
) -> tuple[CleanResult, StageResult]:
    """Clean ``df`` into ``out_dir`` (kept/, dropped/, pool/, xray/) and print the x-ray summary.

    ``previous_pool``: an earlier run's pool to continue from (only new and changed files are cleaned).
    """
    t0 = time.perf_counter()
    result = clean_dataset(df, cfg, out_dir, previous_pool)
    seconds = time.perf_counter() - t0
    contamination = None
    if cfg.contamination_ngram:
        kept = result.final.where(F.col("reason").isNull())
        contamination = contamination_report(kept, humaneval_index(cfg.contamination_ngram))
    xray, artifacts = write_xray(result, out_dir / "xray", contamination)
    print_summary(xray, console)
    bytes_in = sum(r["bytes_in"] or 0 for r in xray["languages"])
    delta = result.delta
    stage_result = StageResult(
        counts={
            "input": result.input_rows,
            "kept": result.kept_rows,
            "dropped": result.dropped_rows,
            "processed": delta.processed_rows if delta else result.input_rows,
            **({f"files.{k}": v for k, v in delta.files.items()} if delta else {}),
        },
        metrics={
            **{f"dropped.{k}": float(v) for k, v in result.drop_reasons.items()},
            **{f"redacted.{k}": float(v) for k, v in result.redactions.items()},
            "clean_mb_per_s": bytes_in / 1e6 / seconds if seconds else 0.0,
        },
        artifacts=artifacts,
        details={
            "drop_reasons": result.drop_reasons,
            "redactions": result.redactions,
            "kept": str(out_dir / "kept"),
            "delta": asdict(delta) if delta else None,
        },
    )
    return result, stage_result
