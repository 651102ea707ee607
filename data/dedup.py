"""Exact and MinHash near-deduplication as Spark jobs that scale past one machine.

Pure parts (normalisation, shingling, hashing, band parameters, union-find) are plain
functions; the Spark parts only map them and join. Near-dedup follows BigCode's recipe:
MinHash over 5-gram word shingles, LSH bands, candidate pairs from shared band buckets,
then connected components so that one survivor (the smallest id, which is deterministic)
is kept per cluster. Two departures, both for recall at the threshold:

- candidate pairs are verified by the exact Jaccard similarity of the two files' shingle
  sets (each file carries its set as sorted 64-bit shingle hashes), not by the MinHash
  estimate, which rejects about half of the true pairs that sit at the threshold;
- since verification removes every false positive, bands and rows are chosen for recall
  (a pair at the threshold shares a bucket with probability ``lsh_recall``) and only
  ``bands * rows`` permutations are computed.

Clusters are found by union-find on the driver when the verified pairs fit (one collect),
and by min-label propagation in Spark beyond that.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import overload

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lathe.core.errors import ConfigError
from lathe.data.config import DedupConfig

_WORD = re.compile(r"\w+", re.UNICODE)
# Odd 64-bit constants: the polynomial multiplier that folds words (or MinHash rows) into one
# hash, and splitmix64's finaliser, which spreads every input bit over the output.
_FOLD = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_SHIFTS = (np.uint64(30), np.uint64(27), np.uint64(31))
_MINHASH_CHUNK = 512  # shingles per (chunk x permutations) block: stays in cache, bounds memory on megabyte files


def normalize_for_exact(text: str) -> str:
    """Content that differs only in line endings or trailing whitespace hashes the same."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n")


def exact_hash(text: str) -> str:
    """SHA-256 of the normalised content."""
    return hashlib.sha256(normalize_for_exact(text).encode("utf-8", "surrogatepass")).hexdigest()


def shingles(text: str, ngram: int) -> set[bytes]:
    """The set of ``ngram``-word shingles (a shorter file is one shingle of all its words).

    The reference definition: :func:`shingle_hashes` hashes exactly these sets."""
    words = _WORD.findall(text)
    if not words:
        return set()
    if len(words) < ngram:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + ngram]).encode() for i in range(len(words) - ngram + 1)}


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise (uint64 arithmetic wraps, as intended)."""
    h = (h ^ (h >> _SHIFTS[0])) * _MIX1
    h = (h ^ (h >> _SHIFTS[1])) * _MIX2
    return h ^ (h >> _SHIFTS[2])


def _fold(columns: Iterable[np.ndarray]) -> np.ndarray:
    """One 64-bit hash per row of the given uint64 columns (a polynomial over them, then mixed)."""
    it = iter(columns)
    h = next(it).copy()
    for column in it:
        h = h * _FOLD + column
    return _mix(h)


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """Sorted, distinct 64-bit hashes of the file's :func:`shingles` (empty if it has no words):
    :func:`window_hashes` of its words. Two different shingles collide with probability about
    2**-64: the Jaccard similarity of these arrays is the Jaccard similarity of the shingle sets."""
    words = _WORD.findall(text)
    if len(words) < ngram:
        return np.array([_hash64(" ".join(words).encode())] if words else [], dtype=np.uint64)
    return window_hashes(words, ngram)


def window_hashes(words: list[str], n: int) -> np.ndarray:
    """Sorted, distinct 64-bit hashes of every ``n`` consecutive ``words`` (empty below ``n`` words).

    Each distinct word is hashed once (BLAKE2b) and the windows are folded from the word
    hashes in numpy, so the cost per word is a dictionary lookup and a few multiplications."""
    if len(words) < n:
        return np.empty(0, dtype=np.uint64)
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), dtype=np.int64, count=len(words))
    word_hashes = np.fromiter((_hash64(w.encode("utf-8", "surrogatepass")) for w in vocab), dtype=np.uint64, count=len(vocab))[
        ids
    ]
    windows = len(words) - n + 1
    return np.unique(_fold(word_hashes[i : i + windows] for i in range(n)))


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of ``num_perm`` permutations ``h -> a*h + b mod 2**64`` (a odd, so each is a bijection)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)
    b = rng.integers(0, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True)
    return a, b


def minhash(hashes: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """MinHash signature (uint64 per permutation) of a non-empty array of shingle hashes.

    The shingle hashes are already uniform, so a multiply-add bijection per permutation
    is enough (no modulo: the costly step of the classic ``(a*h + b) mod p``)."""
    a, b = permutations(num_perm, seed)
    signature = np.full(num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
    buffer = np.empty((min(len(hashes), _MINHASH_CHUNK), num_perm), dtype=np.uint64)
    for start in range(0, len(hashes), _MINHASH_CHUNK):
        chunk = hashes[start : start + _MINHASH_CHUNK]
        block = buffer[: len(chunk)]
        np.multiply(chunk[:, None], a, out=block)  # in place: no temporaries, about 2.5x faster
        np.add(block, b, out=block)
        np.minimum(signature, block.min(axis=0), out=signature)
    return signature


@overload
def collision_probability(jaccard: float, bands: int, rows: int) -> float: ...
@overload
def collision_probability(jaccard: np.ndarray, bands: int, rows: int) -> np.ndarray: ...
def collision_probability(jaccard: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """Probability that two files with this Jaccard similarity share at least one of ``bands`` buckets."""
    return 1.0 - (1.0 - np.asarray(jaccard, dtype=float) ** rows) ** bands


@lru_cache(maxsize=32)
def lsh_params(threshold: float, num_perm: int, recall: float) -> tuple[int, int]:
    """(bands, rows), bands*rows <= num_perm, that catch a pair at ``threshold`` with probability
    >= ``recall`` and, among those, give the fewest candidates below the threshold (the area
    under the collision curve on [0, threshold]: pairs that verification will reject)."""
    xs = np.linspace(0.0, threshold, 1001)
    best: tuple[float, int, int] | None = None
    for rows in range(1, num_perm + 1):
        bands = math.ceil(math.log1p(-recall) / math.log1p(-(threshold**rows)))  # the fewest that reach recall
        if bands * rows > num_perm:
            continue
        ys = collision_probability(xs, bands, rows)
        wasted = float(np.sum((ys[1:] + ys[:-1]) / 2 * np.diff(xs)))
        if best is None or wasted < best[0]:
            best = (wasted, bands, rows)
    if best is None:
        raise ConfigError(
            f"data.dedup.num_perm={num_perm} permutations cannot catch pairs at threshold {threshold} with probability "
            f"{recall}; raise data.dedup.num_perm or lower data.dedup.lsh_recall"
        )
    return best[1], best[2]


def band_keys(signature: np.ndarray, bands: int, rows: int) -> list[int]:
    """One non-negative 63-bit bucket key per band; the band index is folded in so bands never collide."""
    grid = signature[: bands * rows].reshape(bands, rows)
    keys = _fold([np.arange(bands, dtype=np.uint64), *grid.T])
    return (keys >> np.uint64(1)).astype(np.int64).tolist()


def sketch(text: str, cfg: DedupConfig) -> tuple[bytes, list[int]] | None:
    """(shingle hashes as little-endian uint64 bytes, LSH bucket keys) of one file; None if it has no words."""
    hashes = shingle_hashes(text, cfg.ngram)
    if not len(hashes):
        return None
    bands, rows = lsh_params(cfg.threshold, cfg.num_perm, cfg.lsh_recall)
    return hashes.astype("<u8").tobytes(), band_keys(minhash(hashes, bands * rows, cfg.seed), bands, rows)


def exact_jaccard(a: bytes, b: bytes) -> float:
    """Jaccard similarity of two sorted, distinct uint64 arrays (as bytes from :func:`sketch`)."""
    x, y = np.frombuffer(a, dtype="<u8"), np.frombuffer(b, dtype="<u8")
    if len(x) > len(y):
        x, y = y, x
    if not len(x):
        return 0.0
    at = np.searchsorted(y, x).clip(max=len(y) - 1)
    common = int(np.count_nonzero(y[at] == x))
    return common / (len(x) + len(y) - common)


SIGNATURE_SCHEMA = T.StructType(
    [
        T.StructField("id", T.StringType()),
        T.StructField("signature", T.BinaryType()),  # the shingle hashes (see FEATURE_FIELDS)
        T.StructField("bands", T.ArrayType(T.LongType())),
    ]
)


def signatures(df: DataFrame, cfg: DedupConfig) -> DataFrame:
    """(id, signature, bands) for every row of ``df`` (columns id, content) that has words."""

    def sign(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            rows = [(id_, *s) for id_, content in zip(pdf["id"], pdf["content"]) if (s := sketch(content, cfg))]
            yield pd.DataFrame(rows, columns=["id", "signature", "bands"])

    return df.select("id", "content").mapInPandas(sign, SIGNATURE_SCHEMA)


# `signature` holds the file's shingle set (sorted distinct 64-bit shingle hashes, little-endian):
# candidate pairs are verified on it. `bands` are the LSH bucket keys of its MinHash.
FEATURE_FIELDS = [
    T.StructField("exact_hash", T.StringType()),
    T.StructField("signature", T.BinaryType()),
    T.StructField("bands", T.ArrayType(T.LongType())),
]


def add_features(df: DataFrame, cfg: DedupConfig) -> DataFrame:
    """Append ``exact_hash``, ``signature`` and ``bands`` to the rows that passed the filters
    (``reason`` null): the per-file work of deduplication, done once per file and persisted,
    so a later run compares new files with the corpus without recomputing the corpus."""
    schema = T.StructType([*df.schema.fields, *FEATURE_FIELDS])

    def add(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            hashes, sigs, keys = [], [], []
            for content, reason in zip(pdf["content"], pdf["reason"]):
                candidate = reason is None and content is not None
                found = sketch(content, cfg) if candidate and cfg.near else None
                hashes.append(exact_hash(content) if candidate and cfg.exact else None)
                sigs.append(found[0] if found else None)
                keys.append(found[1] if found else None)
            # object columns, None where a file gets no feature (what assigning the lists made)
            yield pdf.assign(
                exact_hash=pd.Series(hashes, index=pdf.index, dtype=object),
                signature=pd.Series(sigs, index=pdf.index, dtype=object),
                bands=pd.Series(keys, index=pdf.index, dtype=object),
            )

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

    Returns the pairs and the number of Spark connected-components rounds (0: clustered on the driver).
    """
    sigs = signatures(df, cfg).persist(StorageLevel.MEMORY_AND_DISK)
    found = near_duplicates_from_signatures(sigs, cfg)
    sigs.unpersist()
    return found


def candidate_pairs(sigs: DataFrame, max_bucket_pairs: int) -> DataFrame:
    """Distinct (src, dst), src < dst, of files (id, bands) that share an LSH bucket."""
    buckets = (
        sigs.select("id", F.posexplode("bands").alias("band", "key"))
        .groupBy("band", "key")
        .agg(F.collect_set("id").alias("ids"))
        .where(F.size("ids") > 1)
    )
    # Small buckets give all their pairs, so a file similar to any member is found; big
    # buckets (boilerplate shared by thousands of files) give star edges from their
    # smallest id, linear instead of quadratic in the bucket's size.
    small = F.size("ids") <= max_bucket_pairs
    all_pairs = (
        buckets.where(small)
        .select(F.explode("ids").alias("src"), "ids")
        .select("src", F.explode("ids").alias("dst"))
        .where(F.col("src") < F.col("dst"))
    )
    stars = buckets.where(~small).select(F.array_min("ids").alias("src"), F.explode("ids").alias("dst"))
    return all_pairs.union(stars.where(F.col("src") != F.col("dst"))).distinct()


def verified_pairs(sigs: DataFrame, cfg: DedupConfig) -> DataFrame:
    """(src, dst) candidate pairs of ``sigs`` (id, signature, bands) whose exact Jaccard is >= the threshold."""
    edges = candidate_pairs(sigs, cfg.max_bucket_pairs)
    # Each pair meets its two shingle sets through one join on the endpoint and one group by
    # pair: the sets are shuffled once per pair end, and the edge side (ids only) is small
    # enough for Spark to broadcast it, which leaves the file side unshuffled.
    ends = edges.select("src", "dst", F.explode(F.array("src", "dst")).alias("id"))
    threshold = cfg.threshold

    @F.pandas_udf(T.BooleanType())  # type: ignore[call-overload]  # pyspark's stubs lack the type-hinted form (returnType only)
    def similar(sets: pd.Series) -> pd.Series:
        return pd.Series([exact_jaccard(a, b) >= threshold for a, b in sets])

    return (
        ends.join(sigs.select("id", "signature"), "id")
        .groupBy("src", "dst")
        .agg(F.collect_list("signature").alias("sets"))
        .where(similar("sets"))
        .select("src", "dst")
    )


def components_on_driver(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Union-find over undirected pairs: every id that is not the smallest of its component, mapped to that smallest id."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        top = x
        while parent[top] != top:
            top = parent[top]
        while parent[x] != top:  # path compression keeps later finds short
            parent[x], x = top, parent[x]
        return top

    for a, b in pairs:
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        ra, rb = root(a), root(b)
        if ra != rb:
            # The smaller root wins, so each component's root is its smallest id.
            parent[max(ra, rb)] = min(ra, rb)
    return {x: top for x in parent if (top := root(x)) != x}


DUPLICATES_SCHEMA = T.StructType([T.StructField("id", T.StringType()), T.StructField("duplicate_of", T.StringType())])


def near_duplicates_from_signatures(sigs: DataFrame, cfg: DedupConfig) -> tuple[DataFrame, int]:
    """:func:`near_duplicates` over precomputed (id, signature, bands): buckets, verified pairs, clusters."""
    verified = verified_pairs(sigs, cfg).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        if verified.count() <= cfg.max_driver_pairs:
            dups = components_on_driver((r["src"], r["dst"]) for r in verified.collect())
            frame = pd.DataFrame(sorted(dups.items()), columns=["id", "duplicate_of"], dtype=object)
            return sigs.sparkSession.createDataFrame(frame, DUPLICATES_SCHEMA), 0
        labels, iterations = connected_components(verified, cfg.max_iterations)
        return labels.where(F.col("id") != F.col("label")).select("id", F.col("label").alias("duplicate_of")), iterations
    finally:
        verified.unpersist()  # the driver's frame is local and Spark's labels are checkpointed


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
    raise RuntimeError(f"connected components did not converge in {max_iterations} iterations; raise data.dedup.max_iterations")
