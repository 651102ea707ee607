"""The shards job: tokenize (+FIM), pack and write MosaicML Streaming MDS shards, in one Spark stage.

Order is fixed by the data, not by Spark: each document gets a seeded stable hash
``order`` in [0, 1); writer partition ``p`` of ``N`` holds the documents with
``order`` in [p/N, (p+1)/N), sorted by ``order``, and writes its own MDS sub-directory
``part-0000p``. The split's index lists the parts in order, so the same clean data,
tokenizer and config give the same samples in the same order on any cluster.

Each (split, part) is one Spark task from raw text to shard files: the documents are
shuffled once (as text) to their writer, which tokenizes, packs and writes them, so every
core tokenizes and no token arrays cross the network.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from rich.console import Console
from rich.table import Table

from lathe.core.errors import InputError, LatheError
from lathe.tokenizer.config import ShardsConfig
from lathe.tokenizer.fim import SpecialIds, encode_documents
from lathe.tokenizer.mds import INDEX, Codec, ShardWriter, under, upload_folder, write_index
from lathe.tokenizer.pack import Packer, token_dtype
from lathe.tokenizer.splits import stable_fraction_col
from lathe.tokenizer.streams import HELD_OUT, LEDGER, StreamInfo, prune_root, release_filelocks

SPLITS = ("train", "val")
VAL_SALT = "shards-val"

STATS_SCHEMA = T.StructType(
    [
        T.StructField("split", T.StringType()),
        T.StructField("part", T.IntegerType()),
        T.StructField("docs", T.LongType()),
        T.StructField("fim_docs", T.LongType()),
        T.StructField("samples", T.LongType()),
        T.StructField("tokens", T.LongType()),
        T.StructField("padding", T.LongType()),
        T.StructField("task", T.IntegerType()),  # the Spark partition that wrote it
        T.StructField("seconds", T.DoubleType()),  # that task's time from its first row to its last shard
        T.StructField("shards", T.StringType()),  # JSON: the part's MDS index entries
    ]
)


def slot_keys(spark: SparkSession, slots: int) -> list[int]:
    """For each writer slot, an int key that Spark's hash partitioning sends to partition ``slot`` of ``slots``.

    ``repartition(n, col)`` places a row in ``pmod(hash(col), n)``; on the raw slot numbers two
    slots often share a partition while another stays empty (one core idle). Evaluated by
    Spark's own ``hash`` on a local relation, so no job runs and the placement is exact.
    """
    candidates = spark.createDataFrame([(k,) for k in range(slots * 64)], "k int")
    placed = candidates.select("k", F.pmod(F.hash("k"), F.lit(slots)).alias("p")).collect()
    first: dict[int, int] = {}
    for row in placed:
        first.setdefault(int(row.p), int(row.k))
    if len(first) < slots:
        raise LatheError(f"no hash key found for {slots - len(first)} of {slots} writer slots")  # 64 tries each: never seen
    return [first[p] for p in range(slots)]


def write_stream(
    docs: DataFrame, tokenizer_json: str, out_root: str, cfg: ShardsConfig, vocab_size: int, pad_id: int
) -> list[dict]:
    """Tokenize (+FIM), pack and write each (split, part) as an MDS sub-directory in one Spark stage.

    Each of the ``2 x partitions`` writer slots is one task on its own core; within a slot
    the documents are sorted by their seeded ``order`` before tokenizing, so the samples do
    not depend on the cluster. Returns one stats row per written part (with its task's time
    and its shard entries, from which :func:`write_split_indexes` builds the split indexes).
    """
    spark = docs.sparkSession
    shared = spark.sparkContext.broadcast(tokenizer_json)
    seed, rate, spm_rate, seq_len, size_limit = cfg.seed, cfg.fim_rate, cfg.fim_spm_rate, cfg.seq_len, cfg.shard_size_limit
    fim_context, line_rate = cfg.fim_example_tokens, cfg.fim_line_rate
    codec = Codec.parse(cfg.compression)  # fail in the driver, before any task starts
    dtype = token_dtype(vocab_size)
    slots = cfg.partitions * len(SPLITS)
    order = stable_fraction_col(F.col("id"), f"shards-order-{cfg.seed}")
    split = split_col(cfg.val_fraction)
    part = F.least(F.floor(order * cfg.partitions), F.lit(cfg.partitions - 1)).cast("int")
    keyed = docs.select("id", "content", split.alias("split"), part.alias("part"), order.alias("order"))
    slot = F.when(F.col("split") == SPLITS[0], 0).otherwise(cfg.partitions) + F.col("part")
    keys = F.array(*[F.lit(k) for k in slot_keys(spark, slots)])
    routed = keyed.withColumn("slot", slot).withColumn("route", keys[F.col("slot")])
    ordered = routed.repartition(slots, "route").sortWithinPartitions("slot", "order").drop("route")

    def write(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pyspark import TaskContext
        from tokenizers import Tokenizer

        started = time.perf_counter()
        context = TaskContext.get()
        assert context is not None  # this runs in a Spark task
        task = context.partitionId()
        # The Rust tokenizer's thread pool would take every core of the executor, once per
        # concurrent task; a task owns `spark.task.cpus` of them. Read when the pool starts (the
        # worker's first batch), so a worker Spark reuses keeps it; an explicit setting wins.
        os.environ.setdefault("RAYON_NUM_THREADS", str(context.cpus()))
        tok = Tokenizer.from_str(shared.value)
        tok.encode_special_tokens = True  # a file that spells "<|endoftext|>" is text
        ids = SpecialIds.from_vocab(tok.token_to_id)
        parts: list[dict] = []
        current: tuple[str, int] | None = None
        writer, packer, docs, fim_docs = None, None, 0, 0
        local, remote = None, None

        def encode_batch(texts: list[str]) -> list[list[int]]:
            # `_fast`: no character offsets, which packing never reads (~1.5x the throughput).
            return [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]

        def close() -> None:
            assert writer is not None and packer is not None and current is not None
            for sample in packer.finish():
                writer.write(sample)
            shards = writer.finish()
            if remote is not None:
                upload_folder(local, remote)
            parts.append(
                dict(
                    split=current[0],
                    part=current[1],
                    docs=docs,
                    fim_docs=fim_docs,
                    samples=(packer.tokens + packer.padding) // seq_len,
                    tokens=packer.tokens,
                    padding=packer.padding,
                    task=task,
                    shards=json.dumps(shards),
                )
            )

        for pdf in batches:
            docs_in = list(zip(pdf["id"], pdf["content"]))
            encoded = encode_documents(docs_in, encode_batch, ids, seed, rate, spm_rate, fim_context, line_rate)
            for key_split, key_part, (tokens, fim) in zip(pdf["split"], pdf["part"], encoded):
                key = (key_split, int(key_part))
                if key != current:
                    if current is not None:
                        close()
                    current = key
                    out = f"{out_root.rstrip('/')}/{key_split}/part-{key_part:05d}"
                    # An object store gets each part from a local folder once it is complete.
                    local, remote = (tempfile.mkdtemp(prefix="lathe-mds-"), out) if "://" in out else (out, None)
                    writer = ShardWriter(local, "tokens", dtype, seq_len, codec, size_limit)
                    packer, docs, fim_docs = Packer(seq_len, pad_id, dtype), 0, 0
                assert writer is not None and packer is not None  # made for the part above
                docs += 1
                fim_docs += int(fim)
                for sample in packer.add(tokens):
                    writer.write(sample)
        if current is not None:
            close()
        seconds = time.perf_counter() - started
        yield pd.DataFrame([{**p, "seconds": seconds} for p in parts], columns=[f.name for f in STATS_SCHEMA.fields])

    return [r.asDict() for r in ordered.mapInPandas(write, STATS_SCHEMA).collect()]


def write_split_indexes(stream_uri: str, parts: list[dict]) -> None:
    """Write ``<split>/index.json`` over each written split's parts, in part order, from the parts'
    shard entries (no file is read back; an object store gets the index uploaded)."""
    for split in SPLITS:
        rows = sorted((r for r in parts if r["split"] == split), key=lambda r: r["part"])
        if not rows:
            continue
        shards = [e for r in rows for e in under(f"part-{r['part']:05d}", json.loads(r["shards"]))]
        out = f"{stream_uri.rstrip('/')}/{split}"
        if "://" in out:
            local = tempfile.mkdtemp(prefix="lathe-mds-index-")
            write_index(shards, os.path.join(local, INDEX))
            upload_folder(local, out)
        else:
            write_index(shards, os.path.join(out, INDEX))


def print_task_balance(parts: list[dict], console: Console) -> None:
    """Per Spark task: the parts it wrote, its tokens and its time (the balance across cores)."""
    table = Table(title="shards job: one row per Spark task")
    for col in ["task", "parts", "tokens", "seconds"]:
        table.add_column(col, justify="right")
    for task in sorted({r["task"] for r in parts}):
        rows = [r for r in parts if r["task"] == task]
        names = ", ".join(f"{r['split']}/{r['part']}" for r in rows)
        table.add_row(str(task), names, f"{sum(r['tokens'] for r in rows):,}", f"{rows[0]['seconds']:.2f}")
    console.print(table)


def split_col(val_fraction: float) -> Column:
    """Each document's split: "val" for a stable hash of its id below ``val_fraction``, else "train"."""
    return F.when(stable_fraction_col(F.col("id"), VAL_SALT) < val_fraction, "val").otherwise("train")


def write_held_out(docs: DataFrame, stream_uri: str, val_fraction: float) -> None:
    """The stream's validation documents as written (id, lang, path, content), one parquet file: what the
    evaluations that need text and its language read instead of decoding the packed shards."""
    held = docs.where(split_col(val_fraction) == "val").select("id", "lang", "path", "content").orderBy("id")
    held.coalesce(1).write.mode("overwrite").parquet(f"{stream_uri}/{HELD_OUT}")


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
