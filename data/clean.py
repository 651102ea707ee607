"""The clean job: filters, PII redaction and dedup over a canonical DataFrame.

Used by the data stage and by ``lathe data clean``. Every input row leaves as either a
kept row (``kept/``: canonical columns, PII redacted) or a dropped row (``dropped/``: id,
path, reason and a few columns for statistics); the ledger check fails the job if
``kept + dropped != input``.

The per-file work (filters, PII, exact hash, MinHash signature) is kept in ``pool/``
beside the clean data. A rerun over a new snapshot reuses it for files whose content did
not change and computes it for the new and changed ones only; deduplication then runs
over the whole pool, so an incremental run and a full rebuild give the same clean set.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lathe.core.errors import LedgerError
from lathe.data.config import DataConfig
from lathe.data.dedup import FEATURE_FIELDS, add_features, exact_duplicates_from_hashes, near_duplicates_from_signatures
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

KEY_FIELDS = [
    T.StructField("file_key", T.StringType()),  # the file: (source, repo, path)
    T.StructField("row_key", T.StringType()),  # the file as it is now: its key, language, size, content digest
]


def with_ids(df: DataFrame) -> DataFrame:
    """Fill missing ids with a stable hash of (source, repo, path, content hash)."""
    derived = F.substring(
        F.sha2(
            F.concat_ws("\x00", "source", "repo", "path", F.coalesce(F.sha2(F.col("content"), 256), F.lit(""))),
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
        out: dict[str, list] = {
            k: [] for k in ["content", "reason", *PII_COLUMNS, "lines", "max_line_length", "mean_line_length"]
        }
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
        keys = [f.name for f in KEY_FIELDS if f.name in pdf]  # carried through when present
        frame = pdf[["id", "lang", "path", "repo", "license", "size_bytes", "source", *keys]].copy()
        for key, values in out.items():
            frame[key] = values
        yield frame[[*(f.name for f in ANNOTATED_SCHEMA.fields), *keys]]


POOL_SCHEMA = T.StructType([*ANNOTATED_SCHEMA.fields, *KEY_FIELDS, *FEATURE_FIELDS])


def with_keys(df: DataFrame) -> DataFrame:
    """Add ``file_key`` and ``row_key``: what a file is, and what it holds now (a changed file keeps
    its file_key and gets a new row_key), so a rerun reuses the work done on unchanged files."""
    file_key = F.sha2(F.concat_ws("\x00", "source", "repo", "path"), 256)
    digest = F.coalesce(F.sha2(F.col("content"), 256), F.lit(""))
    row_key = F.sha2(
        F.concat_ws(
            "\x00",
            file_key,
            F.coalesce("lang", F.lit("")),
            F.col("size_bytes").cast("string"),
            F.coalesce("ingest_error", F.lit("")),
            digest,
        ),
        256,
    )
    return df.withColumn("file_key", file_key).withColumn("row_key", row_key)


@dataclass
class Delta:
    """How a snapshot differs from the previous one, file by file, and what became of the new work."""

    files: dict[str, int]  # new, changed, unchanged, deleted (by file: source, repo, path)
    processed_rows: int  # rows cleaned this run (new or changed content); the rest reused
    kept: int  # of the processed rows
    dropped: dict[str, int]  # of the processed rows, by reason


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
    delta: Delta | None = None  # set when the run continued from a previous pool


def build_pool(keyed: DataFrame, cfg: DataConfig, previous_pool: Path | None) -> tuple[DataFrame, DataFrame]:
    """Every input row (``with_keys`` applied) annotated (filters, PII) with its dedup features: reused from
    ``previous_pool`` for rows whose ``row_key`` it holds, computed for the others. Returns (pool, processed keys)."""
    if previous_pool is None:
        fresh, reused = keyed, None
    else:
        previous = keyed.sparkSession.read.parquet(str(previous_pool)).dropDuplicates(["row_key"])
        fresh = keyed.join(previous.select("row_key"), "row_key", "left_anti")
        # ids come from this snapshot (a parquet source may renumber unchanged rows)
        reused = previous.drop("id").join(keyed.select("row_key", "id"), "row_key").select(*POOL_SCHEMA.fieldNames())
    data_cfg = cfg
    annotated = fresh.mapInPandas(
        lambda it: annotate_partition(it, data_cfg), T.StructType([*ANNOTATED_SCHEMA.fields, *KEY_FIELDS])
    )
    pool = add_features(annotated, cfg.dedup).select(*POOL_SCHEMA.fieldNames())
    if reused is not None:
        pool = pool.unionByName(reused)
    return pool, fresh.select("row_key", "file_key")


def file_changes(current: DataFrame, previous_pool: Path) -> dict[str, int]:
    """Files (by file_key) that are new, changed, unchanged or deleted since the previous snapshot."""
    previous = (
        current.sparkSession.read.parquet(str(previous_pool))
        .groupBy("file_key")
        .agg(F.sort_array(F.collect_set("row_key")).alias("before"))
    )
    now = current.groupBy("file_key").agg(F.sort_array(F.collect_set("row_key")).alias("after"))
    status = (
        now.join(previous, "file_key", "full_outer")
        .select(
            F.when(F.col("before").isNull(), "new")
            .when(F.col("after").isNull(), "deleted")
            .when(F.col("before") == F.col("after"), "unchanged")
            .otherwise("changed")
            .alias("status")
        )
        .groupBy("status")
        .count()
    )
    found = {r["status"]: int(r["count"]) for r in status.collect()}
    return {k: found.get(k, 0) for k in ("new", "changed", "unchanged", "deleted")}


def clean_dataset(df: DataFrame, cfg: DataConfig, output: Path, previous_pool: Path | None = None) -> CleanResult:
    """Filter, redact and deduplicate ``df``; write ``output/kept``, ``output/dropped`` and ``output/pool``.

    With ``previous_pool`` (the pool of an earlier run with the same cleaning config), only
    rows it does not hold are filtered, redacted and signed; deduplication then runs over
    the whole pool's persisted hashes and signatures, so the result equals a full rebuild.
    """
    spark = df.sparkSession
    input_rows = df.count()
    keyed = with_keys(df)
    pool, processed = build_pool(keyed, cfg, previous_pool)
    pool.write.mode("overwrite").parquet(str(output / "pool"))
    pool = spark.read.parquet(str(output / "pool")).persist(StorageLevel.MEMORY_AND_DISK)
    if pool.count() != input_rows:
        raise LedgerError(f"ledger mismatch in {output / 'pool'}: {pool.count()} annotated rows for {input_rows} input rows")
    kept = pool.where(F.col("reason").isNull())
    dup_frames, iterations = [], 0
    if cfg.dedup.exact:
        exact = (
            exact_duplicates_from_hashes(kept.select("id", "exact_hash"))
            .withColumn("dup_reason", F.lit("exact_duplicate"))
            .localCheckpoint()
        )
        dup_frames.append(exact)
        kept = kept.join(exact.select("id"), "id", "left_anti")
    if cfg.dedup.near:
        sigs = kept.where(F.col("signature").isNotNull()).select("id", "signature", "bands")
        near, iterations = near_duplicates_from_signatures(sigs, cfg.dedup)
        dup_frames.append(near.withColumn("dup_reason", F.lit("near_duplicate")))
    final = pool.withColumn("duplicate_of", F.lit(None).cast("string"))
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
    pool.unpersist()

    # The ledger is counted from what was written, not from the plan.
    kept_rows = spark.read.parquet(str(output / "kept")).count()
    dropped = spark.read.parquet(str(output / "dropped"))
    reasons = {r["reason"]: int(r["count"]) for r in dropped.groupBy("reason").count().collect()}
    dropped_rows = sum(reasons.values())
    if kept_rows + dropped_rows != input_rows:
        raise LedgerError(f"ledger mismatch in {output}: kept {kept_rows} + dropped {dropped_rows} != input {input_rows}")
    sums = final.where(F.col("reason").isNull()).agg(*[F.sum(c).alias(c) for c in PII_COLUMNS]).first()
    assert sums is not None  # a global aggregate has one row, even over no rows
    redactions = {c.removeprefix("pii_"): int(sums[c] or 0) for c in PII_COLUMNS}
    delta = None
    if previous_pool is not None:
        delta = _delta(final, processed, file_changes(keyed, previous_pool))
    return CleanResult(input_rows, kept_rows, dropped_rows, dict(sorted(reasons.items())), redactions, iterations, final, delta)


def _delta(final: DataFrame, processed: DataFrame, files: dict[str, int]) -> Delta:
    """What became of the rows cleaned this run; checked, not assumed, against what was processed."""
    rows = final.join(processed.select("row_key").distinct(), "row_key", "left_semi")
    outcome = {(r["reason"] or "kept"): int(r["count"]) for r in rows.groupBy("reason").count().collect()}
    processed_rows = processed.count()
    kept = outcome.pop("kept", 0)
    if kept + sum(outcome.values()) != processed_rows:
        raise LedgerError(f"delta ledger mismatch: {kept} kept + {sum(outcome.values())} dropped != {processed_rows} processed")
    return Delta(files, processed_rows, kept, dict(sorted(outcome.items())))
