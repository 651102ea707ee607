"""The clean corpus as the tokenizer and shards stages read it: the data stage's kept rows,
and the vocabulary's training sample with its held-out files."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lathe.core.errors import InputError
from lathe.tokenizer.config import TokenizerConfig
from lathe.tokenizer.splits import stable_fraction_col

HELDOUT_SALT = "tokenizer-heldout"


def read_clean(spark: SparkSession, kept: Path) -> DataFrame:
    """The data stage's kept rows (its ``clean`` output); a missing or empty set is one clear error."""
    if not kept.is_dir():
        raise InputError(f"clean data {kept} not found; run `lathe run data` first")
    df = spark.read.parquet(str(kept))
    if df.limit(1).count() == 0:
        raise InputError(f"clean data {kept} is empty; widen data.sources or relax the filters")
    return df


def draw_sample(
    df: DataFrame, cfg: TokenizerConfig, heldout_max_files: int = 2000, training: bool = True
) -> tuple[list[str], list[tuple[str, str, str]]]:
    """(training texts, held-out (path, lang, content)) drawn by Spark from the clean data.

    Held-out files are chosen by a stable hash of the id and never trained on; the
    training sample is a seeded Bernoulli sample sized to ``sample_bytes`` (not drawn,
    and empty, when ``training`` is false: a reused vocabulary is only reported on).
    """
    marked = df.withColumn("h", stable_fraction_col(F.col("id"), HELDOUT_SALT))
    heldout_df = marked.where(F.col("h") < cfg.heldout_fraction).orderBy("h").limit(heldout_max_files)
    heldout = [(r["path"], r["lang"], r["content"]) for r in heldout_df.select("path", "lang", "content").collect()]
    if not training:
        return [], heldout
    train = marked.where(F.col("h") >= cfg.heldout_fraction)
    row = train.agg(F.sum(F.octet_length("content"))).first()
    assert row is not None  # a global aggregate has one row, even over no rows
    total = row[0] or 0
    fraction = min(1.0, cfg.sample_bytes / total) if total else 1.0
    sampled = train.sample(fraction=fraction, seed=cfg.seed) if fraction < 1.0 else train
    texts = [r["content"] for r in sampled.orderBy("id").select("content").collect()]
    return texts, heldout
