"""Shards throughput: lathe's Spark tokenize+FIM+pack job vs. a single-process loop, and
StreamingDataset read throughput vs. a raw numpy memmap of the same tokens.

Run by `make bench` after `make all` (it reads runs/<profile>/data/kept and the tokenizer):

    .venv/bin/python benchmarks/shards_bench.py [--runs runs/tiny] [--repeat 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.common import emit  # noqa: E402
from lathe.core.errors import LatheError  # noqa: E402
from lathe.core.spark import SparkConfig, spark_session  # noqa: E402
from lathe.pipelines.runner import finished  # noqa: E402
from lathe.tokenizer.config import ShardsConfig  # noqa: E402
from lathe.tokenizer.fim import SpecialIds, encode_documents  # noqa: E402
from lathe.tokenizer.pack import Packer, token_dtype  # noqa: E402
from lathe.tokenizer.shards import merge_split_indexes, summarize_parts, tokenize, write_parts  # noqa: E402
from lathe.tokenizer.special import PAD  # noqa: E402
from lathe.tokenizer.vocab import load_tokenizer  # noqa: E402


def single_process(docs: pd.DataFrame, tok, cfg: ShardsConfig) -> tuple[int, float]:
    """The baseline a user would write: one process, `encode_batch`, the same FIM and packing, no Spark."""
    ids = SpecialIds.from_vocab(tok.token_to_id)
    t0 = time.perf_counter()
    packer = Packer(cfg.seq_len, tok.token_to_id(PAD), token_dtype(tok.get_vocab_size()))

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    encoded = encode_documents(list(zip(docs["id"], docs["content"])), encode_batch, ids, cfg.seed, cfg.fim_rate, cfg.fim_spm_rate)
    for tokens, _ in encoded:
        for _sample in packer.add(tokens):
            pass
    list(packer.finish())
    return packer.tokens, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench/shards_bench.json"))
    args = parser.parse_args()
    try:
        kept = finished("data", args.runs / "data").path("clean")
        tok = load_tokenizer(finished("tokenizer", args.runs / "tokenizer").path("tokenizer"))
    except LatheError as exc:
        sys.exit(f"error: {exc} (run `make all` first)")
    cfg = ShardsConfig()
    docs = pd.read_parquet(kept, columns=["id", "content"]).sort_values("id")

    base_tokens, base_s = single_process(docs, tok, cfg)

    spark = spark_session(SparkConfig(master="local[*]", shuffle_partitions=8), "lathe-shards-bench")
    work = Path(tempfile.mkdtemp(prefix="lathe-shards-bench-"))
    frame = spark.read.parquet(str(kept)).select("id", "content").cache()
    frame.count()
    t0 = time.perf_counter()
    stats = write_parts(tokenize(frame, tok.to_str(), cfg), str(work), cfg, tok.get_vocab_size(), tok.token_to_id(PAD))
    merge_split_indexes(str(work), ["train", "val"])
    spark_s = time.perf_counter() - t0
    totals = summarize_parts(stats)
    spark_tokens = sum(t.tokens for t in totals.values())

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
        "spark_tokenize_pack_write_s": round(spark_s, 2),
        "spark_tokens_per_s": round(spark_tokens / spark_s),
        "single_process_tokenize_pack_s": round(base_s, 2),
        "single_process_tokens_per_s": round(base_tokens / base_s),
        "ratio_spark_over_single_tokens_per_s": round((spark_tokens / spark_s) / (base_tokens / base_s), 2),
        "streaming_read_tokens_per_s": round(read_tokens / stream_s),
        "memmap_read_tokens_per_s": round(read_tokens / memmap_s),
        "ratio_streaming_over_memmap": round(memmap_s / stream_s, 3),
    }
    emit(report, args.out)
    spark.stop()


if __name__ == "__main__":
    main()
