"""Exact and MinHash near-deduplication as Spark jobs that scale past one machine.

Pure parts (normalisation, shingling, signatures, band parameters) are plain functions;
the Spark parts only map them and join. Near-dedup follows BigCode's recipe: MinHash over
5-gram word shingles, LSH bands chosen for the Jaccard threshold, candidate pairs from
shared band buckets, then connected components so that one survivor (the smallest id,
which is deterministic) is kept per cluster. Candidate pairs are verified against the
MinHash estimate of their Jaccard similarity, which removes LSH false positives.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lathe.data.config import DedupConfig

_MERSENNE = np.uint64((1 << 61) - 1)
_MAX_HASH = np.uint64((1 << 32) - 1)
_WORD = re.compile(r"\w+", re.UNICODE)


def normalize_for_exact(text: str) -> str:
    """Content that differs only in line endings or trailing whitespace hashes the same."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n")


def exact_hash(text: str) -> str:
    """SHA-256 of the normalised content."""
    return hashlib.sha256(normalize_for_exact(text).encode("utf-8", "surrogatepass")).hexdigest()


def shingles(text: str, ngram: int) -> set[bytes]:
    """The set of ``ngram``-word shingles (a shorter file is one shingle of all its words)."""
    words = _WORD.findall(text)
    if not words:
        return set()
    if len(words) < ngram:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + ngram]).encode() for i in range(len(words) - ngram + 1)}


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) coefficients of the ``num_perm`` universal hash permutations."""
    rng = np.random.RandomState(seed)
    a = rng.randint(1, int(_MERSENNE), size=num_perm, dtype=np.uint64)
    b = rng.randint(0, int(_MERSENNE), size=num_perm, dtype=np.uint64)
    return a, b


def minhash_signature(text: str, num_perm: int, ngram: int, seed: int) -> np.ndarray | None:
    """MinHash signature (uint32 per permutation) of the file's shingles; None if it has no words."""
    sh = shingles(text, ngram)
    if not sh:
        return None
    hv = np.fromiter(
        (int.from_bytes(hashlib.sha1(s).digest()[:4], "little") for s in sh), dtype=np.uint64, count=len(sh)
    )
    a, b = permutations(num_perm, seed)
    # uint64 products wrap modulo 2**64 before the Mersenne reduction, as in datasketch:
    # still a good hash family, and it stays vectorised.
    with np.errstate(over="ignore"):
        phv = ((np.outer(hv, a) + b) % _MERSENNE) & _MAX_HASH
    return phv.min(axis=0).astype(np.uint32)


def _false_rates(threshold: float, bands: int, rows: int) -> tuple[float, float]:
    xs = np.linspace(0.0, 1.0, 2001)
    p = 1.0 - (1.0 - xs**rows) ** bands  # probability two files with Jaccard x share a bucket
    below, above = xs <= threshold, xs >= threshold
    fp = np.trapezoid(p[below], xs[below]) if hasattr(np, "trapezoid") else np.trapz(p[below], xs[below])
    fn_y = 1.0 - p[above]
    fn = np.trapezoid(fn_y, xs[above]) if hasattr(np, "trapezoid") else np.trapz(fn_y, xs[above])
    return float(fp), float(fn)


@lru_cache(maxsize=32)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising false positives + negatives."""
    best, best_err = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp, fn = _false_rates(threshold, bands, rows)
            if fp + fn < best_err:
                best, best_err = (bands, rows), fp + fn
    return best


def band_hashes(signature: np.ndarray, bands: int, rows: int) -> list[int]:
    """One 63-bit bucket key per band; the band index is mixed in so bands never collide."""
    out = []
    for i in range(bands):
        chunk = signature[i * rows : (i + 1) * rows].tobytes()
        digest = hashlib.blake2b(chunk, digest_size=8, person=i.to_bytes(4, "little")).digest()
        out.append(int.from_bytes(digest, "little") >> 1)
    return out


def estimated_jaccard(sig_a: bytes, sig_b: bytes) -> float:
    """Share of equal MinHash values: an unbiased estimate of the Jaccard similarity."""
    a, b = np.frombuffer(sig_a, dtype=np.uint32), np.frombuffer(sig_b, dtype=np.uint32)
    return float((a == b).mean())


SIGNATURE_SCHEMA = T.StructType(
    [
        T.StructField("id", T.StringType()),
        T.StructField("signature", T.BinaryType()),
        T.StructField("bands", T.ArrayType(T.LongType())),
    ]
)


def signatures(df: DataFrame, cfg: DedupConfig) -> DataFrame:
    """(id, signature, bands) for every row of ``df`` (columns id, content) that has words."""
    bands, rows = lsh_params(cfg.threshold, cfg.num_perm)
    num_perm, ngram, seed = cfg.num_perm, cfg.ngram, cfg.seed

    def sign(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            ids, sigs, keys = [], [], []
            for id_, content in zip(pdf["id"], pdf["content"]):
                sig = minhash_signature(content, num_perm, ngram, seed)
                if sig is not None:
                    ids.append(id_)
                    sigs.append(sig.tobytes())
                    keys.append(band_hashes(sig, bands, rows))
            yield pd.DataFrame({"id": ids, "signature": sigs, "bands": keys})

    return df.select("id", "content").mapInPandas(sign, SIGNATURE_SCHEMA)


FEATURE_FIELDS = [
    T.StructField("exact_hash", T.StringType()),
    T.StructField("signature", T.BinaryType()),
    T.StructField("bands", T.ArrayType(T.LongType())),
]


def add_features(df: DataFrame, cfg: DedupConfig) -> DataFrame:
    """Append ``exact_hash``, ``signature`` and ``bands`` to the rows that passed the filters
    (``reason`` null): the per-file work of deduplication, done once per file and persisted,
    so a later run compares new files with the corpus without recomputing the corpus."""
    bands, rows = lsh_params(cfg.threshold, cfg.num_perm)
    num_perm, ngram, seed, exact, near = cfg.num_perm, cfg.ngram, cfg.seed, cfg.exact, cfg.near
    schema = T.StructType([*df.schema.fields, *FEATURE_FIELDS])

    def add(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            hashes, sigs, keys = [], [], []
            for content, reason in zip(pdf["content"], pdf["reason"]):
                candidate = reason is None and content is not None
                sig = minhash_signature(content, num_perm, ngram, seed) if candidate and near else None
                hashes.append(exact_hash(content) if candidate and exact else None)
                sigs.append(sig.tobytes() if sig is not None else None)
                keys.append(band_hashes(sig, bands, rows) if sig is not None else None)
            yield pdf.assign(exact_hash=hashes, signature=sigs, bands=keys)

    return df.mapInPandas(add, schema)


def exact_duplicates_from_hashes(df: DataFrame) -> DataFrame:
    """(id, duplicate_of) for every row (id, exact_hash) whose hash a smaller id already has."""
    w = Window.partitionBy("exact_hash").orderBy("id")
    ranked = df.where(F.col("exact_hash").isNotNull()).select("id", F.first("id").over(w).alias("duplicate_of"))
    return ranked.where(F.col("id") != F.col("duplicate_of"))


def exact_duplicates(df: DataFrame) -> DataFrame:
    """(id, duplicate_of) for every row whose normalised content an earlier id already has."""
    hash_udf = F.udf(lambda text: exact_hash(text), T.StringType())
    return exact_duplicates_from_hashes(df.select("id", hash_udf("content").alias("exact_hash")))


def near_duplicates(df: DataFrame, cfg: DedupConfig) -> tuple[DataFrame, int]:
    """(id, duplicate_of) for rows (id, content) in a near-duplicate cluster whose smallest id is another.

    Returns the pairs and the number of connected-components iterations run.
    """
    sigs = signatures(df, cfg).persist()
    found = near_duplicates_from_signatures(sigs, cfg)
    sigs.unpersist()
    return found


def near_duplicates_from_signatures(sigs: DataFrame, cfg: DedupConfig) -> tuple[DataFrame, int]:
    """:func:`near_duplicates` over precomputed (id, signature, bands): buckets, verified pairs, clusters."""
    buckets = (
        sigs.select("id", F.posexplode("bands").alias("band", "key"))
        .groupBy("band", "key")
        .agg(F.collect_set("id").alias("ids"))
        .where(F.size("ids") > 1)
    )
    # Small buckets give all their pairs, so a file similar to any member is found; big
    # buckets (boilerplate shared by thousands of files) give star edges from their
    # smallest id, linear instead of quadratic in the bucket's size.
    small = F.size("ids") <= cfg.max_bucket_pairs
    all_pairs = (
        buckets.where(small)
        .select(F.explode("ids").alias("src"), "ids")
        .select("src", F.explode("ids").alias("dst"))
        .where(F.col("src") < F.col("dst"))
    )
    stars = buckets.where(~small).select(F.array_min("ids").alias("src"), F.explode("ids").alias("dst"))
    edges = all_pairs.union(stars.where(F.col("src") != F.col("dst"))).distinct()
    threshold = cfg.threshold
    jaccard = F.udf(lambda a, b: estimated_jaccard(a, b), T.DoubleType())
    a, b = sigs.alias("a"), sigs.alias("b")
    verified = (
        edges.join(a, F.col("src") == F.col("a.id"))
        .join(b, F.col("dst") == F.col("b.id"))
        .where(jaccard(F.col("a.signature"), F.col("b.signature")) >= threshold)
        .select("src", "dst")
        .localCheckpoint()
    )
    labels, iterations = connected_components(verified, cfg.max_iterations)
    dups = labels.where(F.col("id") != F.col("label")).select("id", F.col("label").alias("duplicate_of"))
    return dups, iterations


def connected_components(edges: DataFrame, max_iterations: int) -> tuple[DataFrame, int]:
    """Label every node of an undirected edge list (src, dst) with the smallest id of its component.

    Min-label propagation: each round a node takes the smallest label among itself and
    its neighbours; it stops when no label changes. Rounds are bounded by the graph's
    diameter, which star edges keep small.
    """
    both = edges.select("src", "dst").union(edges.select(F.col("dst").alias("src"), F.col("src").alias("dst")))
    both = both.localCheckpoint()
    labels = both.select(F.col("src").alias("id")).distinct().withColumn("label", F.col("id")).localCheckpoint()
    for iteration in range(1, max_iterations + 1):
        proposed = both.join(labels, both.src == labels.id).select(F.col("dst").alias("id"), "label")
        new = labels.union(proposed).groupBy("id").agg(F.min("label").alias("label")).localCheckpoint()
        changed = new.alias("n").join(labels.alias("o"), "id").where(F.col("n.label") != F.col("o.label")).count()
        labels = new
        if changed == 0:
            return labels, iteration
    raise RuntimeError(
        f"connected components did not converge in {max_iterations} iterations; raise data.dedup.max_iterations"
    )
