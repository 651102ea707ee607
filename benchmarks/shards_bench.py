"""Shards throughput: lathe's Spark tokenize+FIM+pack job vs. a single-process loop, and
StreamingDataset read throughput vs. a raw numpy memmap of the same tokens.

Run by `make bench` after `make all` (it reads runs/<profile>/data/kept and the tokenizer):

    .venv/bin/python benchmarks/shards_bench.py [--runs runs/tiny] [--scale 8]

``--scale N`` repeats the clean documents N times under new ids (tiny's data is 3.6M
tokens; ``--scale 8`` makes ~29M). The single process runs twice: with `encode_batch` (the
peer issue 14 names) and with `encode_batch_fast` (what lathe's tasks call: the same ids
without character offsets). The Spark job runs twice: the first pays the Python
workers' imports (cold), the second reuses them (warm). The fixed cost is the warm job on
ten documents.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
from rich.console import Console

from benchmarks.common import emit
from lathe.core.errors import LatheError
from lathe.core.spark import SparkConfig, spark_session
from lathe.pipelines.runner import finished
from lathe.tokenizer.config import ShardsConfig
from lathe.tokenizer.fim import SpecialIds, encode_documents
from lathe.tokenizer.pack import Packer, token_dtype
from lathe.tokenizer.shards import print_task_balance, summarize_parts, write_split_indexes, write_stream
from lathe.tokenizer.special import PAD
from lathe.tokenizer.vocab import load_tokenizer


def single_process(docs: pd.DataFrame, tok, cfg: ShardsConfig, fast: bool) -> tuple[int, float]:
    """The baseline a user would write: one process, `encode_batch` (``fast``: `encode_batch_fast`,
    as lathe's tasks call it), the same FIM and packing, no Spark, no writing."""
    ids = SpecialIds.from_vocab(tok.token_to_id)
    t0 = time.perf_counter()
    packer = Packer(cfg.seq_len, tok.token_to_id(PAD), token_dtype(tok.get_vocab_size()))
    encode = tok.encode_batch_fast if fast else tok.encode_batch

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    encoded = encode_documents(
        list(zip(docs["id"], docs["content"])),
        encode_batch,
        ids,
        cfg.seed,
        cfg.fim_rate,
        cfg.fim_spm_rate,
        cfg.fim_example_tokens,
        cfg.fim_line_rate,
    )
    for tokens, _ in encoded:
        for _sample in packer.add(tokens):
            pass
    list(packer.finish())
    return packer.tokens, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--scale", type=int, default=8, help="repeat the documents this many times (new ids)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/shards_bench.json"))
    args = parser.parse_args()
    try:
        kept = finished("data", args.runs / "data").path("clean")
        tok = load_tokenizer(finished("tokenizer", args.runs / "tokenizer").path("tokenizer"))
    except LatheError as exc:
        sys.exit(f"error: {exc} (run `make all` first)")
    cfg = ShardsConfig()
    clean = pd.read_parquet(kept, columns=["id", "content"])
    docs = pd.concat([clean.assign(id=clean["id"] + f"#{i}") for i in range(args.scale)]).sort_values("id")

    base_tokens, base_s = single_process(docs, tok, cfg, fast=False)
    fast_tokens, fast_s = single_process(docs, tok, cfg, fast=True)

    spark = spark_session(SparkConfig(master="local[*]", shuffle_partitions=8), "lathe-shards-bench")
    work = Path(tempfile.mkdtemp(prefix="lathe-shards-bench-"))
    frame = spark.createDataFrame(docs).cache()
    frame.count()

    def job(frame, name: str) -> tuple[list[dict], float]:
        t0 = time.perf_counter()
        parts = write_stream(frame, tok.to_str(), str(work / name), cfg, tok.get_vocab_size(), tok.token_to_id(PAD))
        write_split_indexes(str(work / name), parts)
        return parts, time.perf_counter() - t0

    _, cold_s = job(frame, "cold")
    parts, spark_s = job(frame, "warm")
    few = spark.createDataFrame(docs.head(10)).cache()
    few.count()
    _, fixed_s = job(few, "fixed")
    print_task_balance(parts, Console())
    totals = summarize_parts(parts)
    spark_tokens = sum(t.tokens for t in totals.values())
    work = work / "warm"

    # Read throughput: the train split through StreamingDataset vs a memmap of the same tokens.
    from streaming import StreamingDataset

    ds = StreamingDataset(local=str(work / "train"), shuffle=False, batch_size=1)
    t0 = time.perf_counter()
    arrays = [ds[i]["tokens"] for i in range(len(ds))]
    stream_s = time.perf_counter() - t0
    flat = np.stack(arrays)
    mm_path = work / "train.npy"
    np.save(mm_path, flat)
    mm = np.load(mm_path, mmap_mode="r")
    t0 = time.perf_counter()
    total = 0
    for i in range(mm.shape[0]):
        total += int(np.asarray(mm[i]).size)
    memmap_s = time.perf_counter() - t0
    read_tokens = flat.size

    report = {
        "documents": len(docs),
        "tokens": spark_tokens,
        "spark_cold_s": round(cold_s, 2),
        "spark_tokenize_pack_write_s": round(spark_s, 2),
        "spark_fixed_cost_s (10 documents, warm)": round(fixed_s, 2),
        "task_seconds": sorted(round(r["seconds"], 2) for r in {r["task"]: r for r in parts}.values()),
        "spark_tokens_per_s": round(spark_tokens / spark_s),
        "single_process_tokenize_pack_s": round(base_s, 2),
        "single_process_tokens_per_s": round(base_tokens / base_s),
        "ratio_spark_over_single_tokens_per_s": round((spark_tokens / spark_s) / (base_tokens / base_s), 2),
        "ratio_cold": round((spark_tokens / cold_s) / (base_tokens / base_s), 2),
        "single_process_fast_tokens_per_s": round(fast_tokens / fast_s),
        "ratio_spark_over_single_fast": round((spark_tokens / spark_s) / (fast_tokens / fast_s), 2),
        "streaming_read_tokens_per_s": round(read_tokens / stream_s),
        "memmap_read_tokens_per_s": round(read_tokens / memmap_s),
        "ratio_streaming_over_memmap": round(memmap_s / stream_s, 3),
    }
    emit(report, args.out)
    spark.stop()


if __name__ == "__main__":
    main()
