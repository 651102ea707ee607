"""The clean job: filters, PII redaction and dedup over a canonical DataFrame.

Used by the data stage and by ``lathe data clean``. Every input row leaves as either a
kept row (``kept/``: canonical columns, PII redacted) or a dropped row (``dropped/``: id,
path, reason and a few columns for statistics); the ledger check fails the job if
``kept + dropped != input``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lathe.core.errors import LedgerError
from lathe.data.config import DataConfig
from lathe.data.dedup import exact_duplicates, near_duplicates
from lathe.data.filters import Doc, drop_reason
from lathe.data.pii import PLACEHOLDERS, redact
from lathe.data.sources import CANONICAL_COLUMNS, CANONICAL_FIELDS

PII_COLUMNS = [f"pii_{kind}" for kind in PLACEHOLDERS]
DROPPED_COLUMNS = ["id", "path", "reason", "lang", "source", "size_bytes", "duplicate_of"]

ANNOTATED_SCHEMA = T.StructType(
    [
        *CANONICAL_FIELDS,
        T.StructField("reason", T.StringType()),
        *[T.StructField(c, T.IntegerType()) for c in PII_COLUMNS],
        T.StructField("lines", T.IntegerType()),
        T.StructField("max_line_length", T.IntegerType()),
        T.StructField("mean_line_length", T.DoubleType()),
    ]
)


def with_ids(df: DataFrame) -> DataFrame:
    """Fill missing ids with a stable hash of (source, repo, path, content hash)."""
    derived = F.substring(
        F.sha2(
            F.concat_ws(
                "\x00", "source", "repo", "path", F.coalesce(F.sha2(F.col("content"), 256), F.lit(""))
            ),
            256,
        ),
        1,
        24,
    )
    return df.withColumn("id", F.coalesce(F.col("id"), derived))


def annotate_partition(batches: Iterator[pd.DataFrame], cfg: DataConfig) -> Iterator[pd.DataFrame]:
    """Apply the filters and PII redaction to each row of a partition (pure per row)."""
    for pdf in batches:
        errors = pdf["ingest_error"] if "ingest_error" in pdf else [None] * len(pdf)
        out: dict[str, list] = {k: [] for k in ["content", "reason", *PII_COLUMNS, "lines", "max_line_length", "mean_line_length"]}
        for content, path, lang, size, error in zip(pdf["content"], pdf["path"], pdf["lang"], pdf["size_bytes"], errors):
            doc = Doc(content=content, path=path or "", lang=lang or "unknown", size_bytes=int(size), ingest_error=error)
            reason = drop_reason(doc, cfg)
            counts = dict.fromkeys(PLACEHOLDERS, 0)
            if reason is None:
                content, counts = redact(content, cfg.pii)
            lengths = [len(line) for line in content.splitlines()] if reason is None else []
            out["content"].append(content if reason is None else None)
            out["reason"].append(reason)
            for kind in PLACEHOLDERS:
                out[f"pii_{kind}"].append(counts[kind])
            out["lines"].append(len(lengths))
            out["max_line_length"].append(max(lengths, default=0))
            out["mean_line_length"].append(sum(lengths) / len(lengths) if lengths else 0.0)
        frame = pdf[["id", "lang", "path", "repo", "license", "size_bytes", "source"]].copy()
        for key, values in out.items():
            frame[key] = values
        yield frame[[f.name for f in ANNOTATED_SCHEMA.fields]]


@dataclass
class CleanResult:
    """What the clean job did: the ledger and the annotated rows for statistics."""

    input_rows: int
    kept_rows: int
    dropped_rows: int
    drop_reasons: dict[str, int]
    redactions: dict[str, int]
    dedup_iterations: int
    final: DataFrame = field(repr=False)  # every row with reason (null = kept) and duplicate_of


def clean_dataset(df: DataFrame, cfg: DataConfig, output: Path) -> CleanResult:
    """Filter, redact and deduplicate ``df``; write ``output/kept`` and ``output/dropped``."""
    input_rows = df.count()
    data_cfg = cfg
    annotated = df.mapInPandas(lambda it: annotate_partition(it, data_cfg), ANNOTATED_SCHEMA).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    kept = annotated.where(F.col("reason").isNull())
    dup_frames, iterations = [], 0
    if cfg.dedup.exact:
        exact = exact_duplicates(kept).withColumn("dup_reason", F.lit("exact_duplicate")).localCheckpoint()
        dup_frames.append(exact)
        kept = kept.join(exact.select("id"), "id", "left_anti")
    if cfg.dedup.near:
        near, iterations = near_duplicates(kept, cfg.dedup)
        dup_frames.append(near.withColumn("dup_reason", F.lit("near_duplicate")))
    final = annotated.withColumn("duplicate_of", F.lit(None).cast("string"))
    for dups in dup_frames:
        final = (
            final.join(dups.withColumnRenamed("duplicate_of", "d_of"), "id", "left")
            .withColumn("reason", F.coalesce("reason", "dup_reason"))
            .withColumn("duplicate_of", F.coalesce("duplicate_of", "d_of"))
            .drop("dup_reason", "d_of")
        )
    final = final.persist(StorageLevel.MEMORY_AND_DISK)

    (
        final.where(F.col("reason").isNull())
        .select(*CANONICAL_COLUMNS)
        .repartition("lang")
        .sortWithinPartitions("id")
        .write.mode("overwrite")
        .parquet(str(output / "kept"))
    )
    (
        final.where(F.col("reason").isNotNull())
        .select(*DROPPED_COLUMNS)
        .repartition(1)
        .sortWithinPartitions("id")
        .write.mode("overwrite")
        .parquet(str(output / "dropped"))
    )
    annotated.unpersist()

    # The ledger is counted from what was written, not from the plan.
    spark = df.sparkSession
    kept_rows = spark.read.parquet(str(output / "kept")).count()
    dropped = spark.read.parquet(str(output / "dropped"))
    reasons = {r["reason"]: int(r["count"]) for r in dropped.groupBy("reason").count().collect()}
    dropped_rows = sum(reasons.values())
    if kept_rows + dropped_rows != input_rows:
        raise LedgerError(
            f"ledger mismatch in {output}: kept {kept_rows} + dropped {dropped_rows} != input {input_rows}"
        )
    sums = final.where(F.col("reason").isNull()).agg(*[F.sum(c).alias(c) for c in PII_COLUMNS]).first()
    redactions = {c.removeprefix("pii_"): int(sums[c] or 0) for c in PII_COLUMNS}
    return CleanResult(input_rows, kept_rows, dropped_rows, dict(sorted(reasons.items())), redactions, iterations, final)
