"""Data-stage throughput, and lathe's Spark MinHash near-dedup side by side with datasketch.

Run by `make bench` (never by tests: timings on shared 2-core machines are noisy):

    .venv/bin/python benchmarks/data_bench.py [--mb 20] [--out runs/bench/data_bench.json]

1. clean + dedup throughput (MB/s of ingested bytes) of the embedded corpus through
   the same `clean_dataset` job the data stage runs;
2. near-dedup only, on the same documents (after filters and exact dedup): lathe's Spark
   job vs. single-process datasketch (MinHash + MinHashLSH, same permutations count,
   shingles and threshold, same "smallest id survives" rule), with the agreement of the
   two on which files are near-duplicates.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasketch import MinHash, MinHashLSH  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from benchmarks.common import emit  # noqa: E402
from lathe.core.spark import SparkConfig, spark_session  # noqa: E402
from lathe.data.clean import clean_dataset  # noqa: E402
from lathe.data.config import DataConfig, EmbeddedSourceConfig  # noqa: E402
from lathe.data.dedup import near_duplicates, shingles  # noqa: E402
from lathe.data.pipeline import ingest  # noqa: E402


def datasketch_near_duplicates(docs: dict[str, str], cfg: DataConfig) -> set[str]:
    """Ids that datasketch marks as near-duplicates of a smaller id (union-find clusters)."""
    d = cfg.dedup
    lsh = MinHashLSH(threshold=d.threshold, num_perm=d.num_perm)
    sigs: dict[str, MinHash] = {}
    for doc_id in sorted(docs):
        sh = shingles(docs[doc_id], d.ngram)
        if not sh:
            continue
        m = MinHash(num_perm=d.num_perm, seed=d.seed)
        m.update_batch(list(sh))
        sigs[doc_id] = m
        lsh.insert(doc_id, m)
    parent = {k: k for k in sigs}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for doc_id, m in sigs.items():
        for other in lsh.query(m):
            if other != doc_id and m.jaccard(sigs[other]) >= d.threshold:  # same verification as lathe
                a, b = find(doc_id), find(other)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return {k for k in sigs if find(k) != k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=20.0, help="embedded corpus budget (MB on disk)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/data_bench.json"))
    args = parser.parse_args()

    cfg = DataConfig(sources=[EmbeddedSourceConfig(max_bytes=int(args.mb * 1e6))], max_file_bytes=1_000_000)
    spark = spark_session(SparkConfig(master="local[*]", driver_memory="4g", shuffle_partitions=8), "lathe-bench")
    work = Path(tempfile.mkdtemp(prefix="lathe-bench-"))

    t0 = time.perf_counter()
    ingest(spark, cfg, work / "staging").write.parquet(str(work / "ingested"))
    ingest_s = time.perf_counter() - t0
    ingested = spark.read.parquet(str(work / "ingested"))
    mb_in = ingested.agg(F.sum("size_bytes")).first()[0] / 1e6

    t0 = time.perf_counter()
    result = clean_dataset(ingested, cfg, work / "clean")
    clean_s = time.perf_counter() - t0

    # The near-dedup input: rows that passed the filters and exact dedup.
    candidates = result.final.where(F.col("reason").isNull() | (F.col("reason") == "near_duplicate"))
    docs = {r["id"]: r["content"] for r in candidates.select("id", "content").collect()}
    frame = spark.createDataFrame(sorted(docs.items()), ["id", "content"]).repartition(8).cache()
    frame.count()

    t0 = time.perf_counter()
    ours_df, iterations = near_duplicates(frame, cfg.dedup)
    ours = {r["id"] for r in ours_df.collect()}
    ours_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    theirs = datasketch_near_duplicates(docs, cfg)
    theirs_s = time.perf_counter() - t0

    union = ours | theirs
    report = {
        "corpus_mb": round(mb_in, 2),
        "files": result.input_rows,
        "ingest_s": round(ingest_s, 2),
        "clean_dedup_s": round(clean_s, 2),
        "clean_dedup_mb_per_s": round(mb_in / clean_s, 3),
        "near_dedup_docs": len(docs),
        "lathe_spark_near_dedup_s": round(ours_s, 2),
        "datasketch_near_dedup_s": round(theirs_s, 2),
        "time_ratio_lathe_over_datasketch": round(ours_s / theirs_s, 2),
        "near_duplicates_lathe": len(ours),
        "near_duplicates_datasketch": len(theirs),
        "agreement_jaccard": round(len(ours & theirs) / len(union), 4) if union else 1.0,
        "cc_iterations": iterations,
    }
    emit(report, args.out)
    spark.stop()


if __name__ == "__main__":
    main()
