"""Data-stage throughput, and lathe's Spark near-dedup against exact Jaccard, datasketch and datatrove.

Run by `make bench` (never by tests: timings on shared 2-core machines are noisy):

    .venv/bin/python benchmarks/data_bench.py [--mb 20] [--out runs/bench/data_bench.json]

1. clean + dedup throughput (MB/s of ingested bytes) of the embedded corpus through
   the same `clean_dataset` job the data stage runs;
2. near-dedup only, on the same documents (after filters and exact dedup), by lathe's
   Spark job, single-process datasketch (MinHash + MinHashLSH: same permutations count,
   shingles and threshold, candidates verified by the MinHash estimate) and datatrove's
   MinHash pipeline (its own defaults: 14 bands x 8 rows, spaCy words, 2 tasks);
3. the ground truth: every pair's exact Jaccard similarity over lathe's shingles (sparse
   all-pairs intersection counts), clustered as the tools cluster (connected components,
   the smallest id survives). Precision and recall are over the files each tool removes;
   pair recall is the share of true pairs (Jaccard >= threshold) that end in one cluster.

datatrove runs in its own venv (`.venv-bench`, requirements/bench.txt: it must stay out of
the product's lock), in a subprocess that runs this file with `--datatrove-worker`; without
that venv its row is skipped. Only the standard library is imported at module level, so
the worker starts in that venv without lathe, Spark or datasketch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATATROVE_TASKS = 2  # both cores, as Spark's local[*]


def datasketch_clusters(docs: dict[str, str], threshold: float, num_perm: int, ngram: int, seed: int) -> dict[str, str]:
    """datasketch's near-duplicate clusters (union-find over verified LSH candidates): id -> cluster label."""
    from datasketch import MinHash, MinHashLSH

    from lathe.data.dedup import shingles

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    sigs: dict[str, MinHash] = {}
    for doc_id in sorted(docs):
        sh = shingles(docs[doc_id], ngram)
        if not sh:
            continue
        m = MinHash(num_perm=num_perm, seed=seed)
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
            if other != doc_id and m.jaccard(sigs[other]) >= threshold:  # lathe's former verification
                a, b = find(doc_id), find(other)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return {k: find(k) for k in sigs}


def exact_pairs(docs: dict[str, str], threshold: float, ngram: int) -> list[tuple[str, str]]:
    """Every pair of documents whose shingle sets' Jaccard similarity is >= ``threshold``.

    Brute force, done in sparse linear algebra: a documents x shingles incidence matrix X,
    all intersection sizes X @ X.T by blocks of rows. Shingles are told apart by BLAKE2b
    digests of their text, independent of lathe's word-hash folding."""
    import hashlib

    import numpy as np
    from scipy import sparse

    from lathe.data.dedup import shingles

    ids = sorted(docs)
    per_doc = [
        np.fromiter(
            (int.from_bytes(hashlib.blake2b(s, digest_size=8).digest(), "little") for s in shingles(docs[i], ngram)),
            dtype=np.uint64,
        )
        for i in ids
    ]
    _, columns = np.unique(np.concatenate(per_doc), return_inverse=True)
    sizes = np.array([len(h) for h in per_doc])
    indptr = np.concatenate([[0], np.cumsum(sizes)])
    x = sparse.csr_matrix((np.ones(len(columns), dtype=np.int32), columns, indptr), shape=(len(ids), columns.max() + 1))
    xt = x.T.tocsc()
    found = []
    for start in range(0, len(ids), 256):
        block = (x[start : start + 256] @ xt).tocoo()
        rows = block.row + start
        upper = block.col > rows
        i, j, common = rows[upper], block.col[upper], block.data[upper].astype(np.int64)
        similar = common / (sizes[i] + sizes[j] - common) >= threshold
        found += [(ids[a], ids[b]) for a, b in zip(i[similar], j[similar])]
    return found


def truth_clusters(ids: Iterable[str], pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Connected components of the exact-Jaccard graph (scipy's, not lathe's): id -> smallest id of its component."""
    import numpy as np
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components

    order = sorted(ids)
    index = {k: n for n, k in enumerate(order)}
    src = np.array([index[a] for a, _ in pairs], dtype=np.int64)
    dst = np.array([index[b] for _, b in pairs], dtype=np.int64)
    graph = sparse.coo_matrix((np.ones(len(pairs)), (src, dst)), shape=(len(order), len(order)))
    _, labels = connected_components(graph, directed=False)
    smallest: dict[int, str] = {}
    for k, label in zip(order, labels):  # ids in order: the first seen is the smallest
        smallest.setdefault(int(label), k)
    return {k: smallest[int(label)] for k, label in zip(order, labels)}


def removed(clusters: dict[str, Any]) -> set[str]:
    """The files a clustering removes when the smallest id of each cluster survives."""
    smallest: dict[Any, str] = {}
    for k in sorted(clusters):
        smallest.setdefault(clusters[k], k)
    return {k for k, label in clusters.items() if smallest[label] != k}


def score(clusters: dict[str, Any], truth_removed: set[str], true_pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Precision and recall of the removed files against the truth, and the share of true pairs kept together."""
    ours = removed(clusters)
    hit = len(ours & truth_removed)
    together = sum(1 for a, b in true_pairs if a in clusters and b in clusters and clusters[a] == clusters[b])
    return {
        "removed": len(ours),
        "precision": round(hit / len(ours), 4) if ours else 1.0,
        "recall": round(hit / len(truth_removed), 4) if truth_removed else 1.0,
        "pair_recall": round(together / len(true_pairs), 4) if true_pairs else 1.0,
    }


def datatrove_worker(work: Path) -> None:
    """Run datatrove's MinHash pipeline on ``work/input/*.jsonl`` (in .venv-bench) and write
    ``work/result.json``: the pipeline's seconds and each clustered document's (file, line, cluster)."""
    import struct

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader

    config = MinhashConfig()  # datatrove's recipe as shipped: 5-grams, 14 buckets x 8 hashes
    logs = str(work / "logs")
    stages = [
        LocalPipelineExecutor(
            [JsonlReader(str(work / "input")), MinhashDedupSignature(output_folder=str(work / "sigs"), config=config)],
            tasks=DATATROVE_TASKS,
            logging_dir=f"{logs}/sigs",
        ),
        LocalPipelineExecutor(
            [MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=config)],
            tasks=config.num_buckets,
            workers=DATATROVE_TASKS,
            logging_dir=f"{logs}/buckets",
        ),
        LocalPipelineExecutor(
            [
                MinhashDedupCluster(
                    input_folder=str(work / "buckets"), output_folder=str(work / "clusters"), config=config, save_cluster_id=True
                )
            ],
            tasks=1,
            logging_dir=f"{logs}/clusters",
        ),
    ]
    t0 = time.perf_counter()
    for stage in stages:
        stage.run()
    seconds = time.perf_counter() - t0
    members = []
    for rank in range(DATATROVE_TASKS):
        path = work / "clusters" / f"{rank:06d}.clusters"
        data = path.read_bytes() if path.exists() else b""
        members += [(rank, doc, cluster) for doc, cluster in struct.iter_unpack("<2I", data)]
    (work / "result.json").write_text(json.dumps({"seconds": seconds, "members": members}))


def datatrove_clusters(docs: dict[str, str], python: Path) -> tuple[dict[str, int], float]:
    """datatrove's clusters (id -> cluster id) and its pipeline seconds, run by ``python`` (the bench venv)."""
    work = Path(tempfile.mkdtemp(prefix="lathe-datatrove-"))
    (work / "input").mkdir()
    ids = sorted(docs)
    shards = [ids[rank::DATATROVE_TASKS] for rank in range(DATATROVE_TASKS)]  # one input file per task
    for rank, shard in enumerate(shards):
        with open(work / "input" / f"{rank:02d}.jsonl", "w") as f:
            f.writelines(json.dumps({"id": k, "text": docs[k]}) + "\n" for k in shard)
    with open(work / "worker.log", "w") as log:
        done = subprocess.run([str(python), __file__, "--datatrove-worker", str(work)], stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = (work / "worker.log").read_text().splitlines()[-20:]
        raise RuntimeError(f"datatrove worker failed ({work / 'worker.log'}):\n" + "\n".join(tail))
    result = json.loads((work / "result.json").read_text())
    return {shards[rank][doc]: cluster for rank, doc, cluster in result["members"]}, result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=20.0, help="embedded corpus budget (MB on disk)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/data_bench.json"))
    parser.add_argument(
        "--bench-python",
        type=Path,
        default=ROOT / ".venv-bench/bin/python",
        help="interpreter of the venv with datatrove (requirements/bench.txt)",
    )
    parser.add_argument("--datatrove-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.datatrove_worker:
        datatrove_worker(args.datatrove_worker)
        return

    sys.path.insert(0, str(ROOT))
    from pyspark.sql import functions as F

    from benchmarks.common import emit
    from lathe.core.spark import SparkConfig, spark_session
    from lathe.data.clean import clean_dataset
    from lathe.data.config import DataConfig, EmbeddedSourceConfig
    from lathe.data.dedup import lsh_params, near_duplicates
    from lathe.data.pipeline import ingest

    cfg = DataConfig(sources=[EmbeddedSourceConfig(max_bytes=int(args.mb * 1e6))], max_file_bytes=1_000_000)
    d = cfg.dedup
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
    true_pairs = exact_pairs(docs, d.threshold, d.ngram)
    truth = truth_clusters(docs, true_pairs)
    truth_removed = removed(truth)
    truth_s = time.perf_counter() - t0

    # Every Spark job the near-dedup call starts carries this group, so the status tracker counts them.
    sc = spark.sparkContext
    sc.setJobGroup("near-dedup", "lathe near-dedup under the benchmark")
    t0 = time.perf_counter()
    ours_df, iterations = near_duplicates(frame, d)
    ours = {r["id"]: r["duplicate_of"] for r in ours_df.collect()}
    ours_s = time.perf_counter() - t0
    spark_jobs = len(sc.statusTracker().getJobIdsForGroup("near-dedup"))
    sc.setJobGroup("bench", "after near-dedup")
    ours_clusters = {**{k: k for k in ours.values()}, **ours}

    t0 = time.perf_counter()
    theirs = datasketch_clusters(docs, d.threshold, d.num_perm, d.ngram, d.seed)
    theirs_s = time.perf_counter() - t0

    bands, rows = lsh_params(d.threshold, d.num_perm, d.lsh_recall)
    report: dict[str, Any] = {
        "corpus_mb": round(mb_in, 2),
        "files": result.input_rows,
        "ingest_s": round(ingest_s, 2),
        "clean_dedup_s": round(clean_s, 2),
        "clean_dedup_mb_per_s": round(mb_in / clean_s, 3),
        "near_dedup_docs": len(docs),
        "near_dedup_mb": round(sum(len(t.encode()) for t in docs.values()) / 1e6, 2),
        "true_pairs": len(true_pairs),
        "true_removed": len(truth_removed),
        "ground_truth_s": round(truth_s, 2),
        "lathe_bands_rows": f"{bands}x{rows}",
        "lathe_near_dedup_s": round(ours_s, 2),
        "lathe_spark_jobs": spark_jobs,
        "lathe_cc_rounds": iterations,
        **{f"lathe_{k}": v for k, v in score(ours_clusters, truth_removed, true_pairs).items()},
        "datasketch_near_dedup_s": round(theirs_s, 2),
        **{f"datasketch_{k}": v for k, v in score(theirs, truth_removed, true_pairs).items()},
        "time_ratio_lathe_over_datasketch": round(ours_s / theirs_s, 2),
    }
    if args.bench_python.exists():
        dt_clusters, dt_s = datatrove_clusters(docs, args.bench_python)
        report["datatrove_near_dedup_s"] = round(dt_s, 2)
        report.update({f"datatrove_{k}": v for k, v in score(dt_clusters, truth_removed, true_pairs).items()})
        report["time_ratio_lathe_over_datatrove"] = round(ours_s / dt_s, 2)
    else:
        print(f"datatrove skipped: no {args.bench_python} (create it from requirements/bench.txt)")
    emit(report, args.out)
    spark.stop()


if __name__ == "__main__":
    main()
