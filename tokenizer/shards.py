"""The shards job: tokenize (+FIM) with Spark, pack, write MosaicML Streaming MDS shards.

Order is fixed by the data, not by Spark: each document gets a seeded stable hash
``order`` in [0, 1); writer partition ``p`` of ``N`` holds the documents with
``order`` in [p/N, (p+1)/N), sorted by ``order``, and writes its own MDS sub-directory
``part-0000p``. The merged index lists the parts in order, so the same clean data,
tokenizer and config give the same samples in the same order on any cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from rich.console import Console
from rich.table import Table

from lathe.core.errors import InputError
from lathe.tokenizer.config import ShardsConfig
from lathe.tokenizer.fim import SpecialIds, encode_documents
from lathe.tokenizer.pack import Packer, token_dtype
from lathe.tokenizer.splits import stable_fraction_col
from lathe.tokenizer.streams import LEDGER, StreamInfo, prune_root, release_filelocks

SPLITS = ("train", "val")
VAL_SALT = "shards-val"

TOKENIZED_SCHEMA = T.StructType(
    [
        T.StructField("split", T.StringType()),
        T.StructField("part", T.IntegerType()),
        T.StructField("order", T.DoubleType()),
        T.StructField("tokens", T.BinaryType()),  # int32 ids
        T.StructField("fim", T.BooleanType()),
    ]
)
STATS_SCHEMA = T.StructType(
    [
        T.StructField("split", T.StringType()),
        T.StructField("part", T.IntegerType()),
        T.StructField("docs", T.LongType()),
        T.StructField("fim_docs", T.LongType()),
        T.StructField("samples", T.LongType()),
        T.StructField("tokens", T.LongType()),
        T.StructField("padding", T.LongType()),
    ]
)


def mds_columns(seq_len: int, vocab_size: int) -> dict[str, str]:
    """MDS column spec: one fixed-shape token array per sample."""
    return {"tokens": f"ndarray:{token_dtype(vocab_size).name}:{seq_len}"}


def tokenize(docs: DataFrame, tokenizer_json: str, cfg: ShardsConfig) -> DataFrame:
    """(split, part, order, tokens, fim) per document; the tokenizer is broadcast once."""
    spark = docs.sparkSession
    shared = spark.sparkContext.broadcast(tokenizer_json)
    seed, rate, spm_rate = cfg.seed, cfg.fim_rate, cfg.fim_spm_rate
    order = stable_fraction_col(F.col("id"), f"shards-order-{cfg.seed}")
    keyed = docs.select(
        "id",
        "content",
        F.when(stable_fraction_col(F.col("id"), VAL_SALT) < cfg.val_fraction, "val").otherwise("train").alias("split"),
        order.alias("order"),
        F.least(F.floor(order * cfg.partitions), F.lit(cfg.partitions - 1)).cast("int").alias("part"),
    )

    def encode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(shared.value)
        tok.encode_special_tokens = True  # a file that spells "<|endoftext|>" is text
        ids = SpecialIds.from_vocab(tok.token_to_id)

        def encode_batch(texts: list[str]) -> list[list[int]]:
            return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

        for pdf in batches:
            out = encode_documents(list(zip(pdf["id"], pdf["content"])), encode_batch, ids, seed, rate, spm_rate)
            yield pd.DataFrame(
                {
                    "split": pdf["split"],
                    "part": pdf["part"].astype("int32"),
                    "order": pdf["order"],
                    "tokens": [np.asarray(t, dtype=np.int32).tobytes() for t, _ in out],
                    "fim": [f for _, f in out],
                }
            )

    return keyed.mapInPandas(encode, TOKENIZED_SCHEMA)


def write_parts(tokenized: DataFrame, out_root: str, cfg: ShardsConfig, vocab_size: int, pad_id: int) -> list[dict]:
    """Pack each (split, part) in order and write it as an MDS sub-directory; return stats rows."""
    seq_len, compression, size_limit = cfg.seq_len, cfg.compression, cfg.shard_size_limit
    columns = mds_columns(seq_len, vocab_size)
    dtype = token_dtype(vocab_size)

    def write(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from streaming import MDSWriter

        stats: list[dict] = []
        current: tuple[str, int] | None = None
        writer, packer, docs, fim_docs = None, None, 0, 0

        def close() -> None:
            assert writer is not None and packer is not None and current is not None
            for sample in packer.finish():
                writer.write({"tokens": sample})
            writer.finish()
            samples = (packer.tokens + packer.padding) // seq_len
            stats.append(dict(split=current[0], part=current[1], docs=docs, fim_docs=fim_docs,
                              samples=samples, tokens=packer.tokens, padding=packer.padding))

        for pdf in batches:
            for split, part, tokens, fim in zip(pdf["split"], pdf["part"], pdf["tokens"], pdf["fim"]):
                key = (split, int(part))
                if key != current:
                    if current is not None:
                        close()
                    current = key
                    out = f"{out_root.rstrip('/')}/{split}/part-{part:05d}"
                    writer = MDSWriter(out=out, columns=columns, compression=compression, size_limit=size_limit)
                    packer, docs, fim_docs = Packer(seq_len, pad_id, dtype), 0, 0
                docs += 1
                fim_docs += int(fim)
                for sample in packer.add(np.frombuffer(tokens, dtype=np.int32).tolist()):
                    writer.write({"tokens": sample})
        if current is not None:
            close()
        yield pd.DataFrame(stats, columns=[f.name for f in STATS_SCHEMA.fields])

    ordered = tokenized.repartition(cfg.partitions * len(SPLITS), "split", "part").sortWithinPartitions(
        "split", "part", "order"
    )
    return [r.asDict() for r in ordered.mapInPandas(write, STATS_SCHEMA).collect()]


def with_digest(docs: DataFrame) -> DataFrame:
    """The clean rows with a content digest: a changed file is a new document even under its old id."""
    return docs.withColumn("digest", F.sha2(F.col("content"), 256))


def new_documents(spark: SparkSession, docs: DataFrame, earlier: list[StreamInfo]) -> DataFrame:
    """The clean documents (with ``digest``) that no earlier stream holds."""
    if not earlier:
        return docs
    held = spark.read.parquet(*[f"{s.uri}/{LEDGER}" for s in earlier]).select("id", "digest")
    return docs.join(held, ["id", "digest"], "left_anti")


def write_ledger(docs: DataFrame, stream_uri: str) -> None:
    """Record which documents the stream holds (for the next run's delta)."""
    docs.select("id", "digest").coalesce(1).write.mode("overwrite").parquet(f"{stream_uri}/{LEDGER}")


@dataclass
class ShardSummary:
    """Totals of one split as written."""

    split: str
    docs: int
    fim_docs: int
    samples: int
    tokens: int
    padding: int


def summarize_parts(stats: list[dict]) -> dict[str, ShardSummary]:
    """Per-split totals from the per-part stats rows."""
    out = {}
    for split in SPLITS:
        rows = [r for r in stats if r["split"] == split]
        out[split] = ShardSummary(
            split, *(sum(int(r[k]) for r in rows) for k in ("docs", "fim_docs", "samples", "tokens", "padding"))
        )
    return out


def merge_split_indexes(stream_uri: str, splits: list[str]) -> None:
    """Write ``<split>/index.json`` over each split's part directories (local or remote)."""
    import logging

    from streaming.base.util import merge_index

    # merge_index warns that the (expected) part folders exist; keep real errors only.
    logging.getLogger("streaming.base.storage.upload").setLevel(logging.ERROR)
    for split in splits:
        merge_index(f"{stream_uri.rstrip('/')}/{split}", keep_local=True)


def read_back(split_uri: str, cache: Path) -> tuple[int, int, np.ndarray]:
    """Read every sample of a split with StreamingDataset: (samples, tokens, first sample).

    A remote split is streamed through the local ``cache`` folder, as training will.
    """
    from streaming import StreamingDataset

    if "://" in split_uri:
        ds = StreamingDataset(remote=split_uri, local=str(cache), shuffle=False, batch_size=1)
    else:
        ds = StreamingDataset(local=split_uri, shuffle=False, batch_size=1)
    samples, tokens, first = 0, 0, None
    try:
        for sample in ds:
            arr = sample["tokens"]
            first = arr if first is None else first
            samples += 1
            tokens += int(arr.size)
    finally:
        release_filelocks(ds)
    return samples, tokens, first if first is not None else np.zeros(0, dtype=np.int64)


def prepare_output(root: str, keep: list[str]) -> None:
    """A local stream root holding only the streams kept (no stale ones); fail early if it is not writable."""
    if "://" in root:
        return  # object stores: the writers create it; credentials are checked on first write
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
        prune_root(root, keep)
        (path / ".write-test").write_text("ok")
        (path / ".write-test").unlink()
    except OSError as exc:
        raise InputError(f"shards output {root} is not writable ({exc.strerror}); fix shards.output") from None


def print_shards(totals: dict[str, ShardSummary], cfg: ShardsConfig, sample: str, console: Console) -> None:
    """The shard summary and a decoded sample."""
    table = Table(title=f"MDS shards (seq_len {cfg.seq_len}, FIM rate {cfg.fim_rate})")
    for col in ["split", "docs", "FIM docs", "samples", "tokens", "padding"]:
        table.add_column(col, justify="left" if col == "split" else "right")
    for t in totals.values():
        table.add_row(t.split, f"{t.docs:,}", f"{t.fim_docs:,}", f"{t.samples:,}", f"{t.tokens:,}", f"{t.padding:,}")
    console.print(table)
    console.print("first training sample, decoded (300 chars):")
    console.print(repr(sample[:300]), highlight=False)
