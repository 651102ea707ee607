"""Dedup: pure MinHash parts, and the Spark jobs on planted duplicates."""

from __future__ import annotations

import random

import pytest

from lathe.data.config import DedupConfig
from lathe.data.dedup import (
    connected_components,
    estimated_jaccard,
    exact_duplicates,
    exact_hash,
    lsh_params,
    minhash_signature,
    near_duplicates,
    shingles,
)


def test_exact_hash_ignores_line_endings_and_trailing_whitespace_only() -> None:
    a = "def f():\n    return 1\n"
    assert exact_hash(a) == exact_hash("def f():  \r\n    return 1\r\n\n")
    assert exact_hash(a) != exact_hash("def f():\n  return 1\n")  # indentation is meaningful


def _words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"w{rng.randrange(10_000)}" for _ in range(n)]


@pytest.mark.parametrize("keep", [0.95, 0.8, 0.5])
def test_minhash_estimate_tracks_true_jaccard(keep: float) -> None:
    base = _words(400, 1)
    other = [w if random.Random(i).random() < keep else f"x{i}" for i, w in enumerate(base)]
    a, b = " ".join(base), " ".join(other)
    sa, sb = shingles(a, 5), shingles(b, 5)
    true = len(sa & sb) / len(sa | sb)
    est = estimated_jaccard(minhash_signature(a, 256, 5, 1).tobytes(), minhash_signature(b, 256, 5, 1).tobytes())
    assert abs(est - true) < 0.1, (est, true)


def test_signature_edge_cases_and_determinism() -> None:
    assert minhash_signature("   ", 64, 5, 0) is None
    short = minhash_signature("just three words", 64, 5, 0)
    assert short is not None and short.shape == (64,)
    assert (minhash_signature("a b c d e f", 64, 5, 7) == minhash_signature("a b c d e f", 64, 5, 7)).all()


def test_lsh_params_fit_the_permutations_and_threshold() -> None:
    bands, rows = lsh_params(0.7, 256)
    assert bands * rows <= 256
    # the S-curve's midpoint (1/b)^(1/r) sits near the threshold
    assert 0.6 < (1 / bands) ** (1 / rows) < 0.8
    assert lsh_params(0.9, 256)[1] > rows  # a stricter threshold needs longer bands


@pytest.mark.spark
def test_connected_components_label_with_smallest_id(spark) -> None:
    edges = spark.createDataFrame([("b", "a"), ("c", "b"), ("e", "d"), ("f", "e"), ("g", "f")], ["src", "dst"])
    labels, iterations = connected_components(edges, 20)
    got = {r["id"]: r["label"] for r in labels.collect()}
    assert got == {"a": "a", "b": "a", "c": "a", "d": "d", "e": "d", "f": "d", "g": "d"}
    assert iterations >= 2
    with pytest.raises(RuntimeError, match="max_iterations"):
        connected_components(edges, 1)


@pytest.mark.spark
def test_spark_dedup_finds_planted_duplicates(spark) -> None:
    docs = {f"doc{i:02d}": " ".join(_words(300, i)) for i in range(20)}
    docs["exact_of_03"] = docs["doc03"] + "   \n"
    base = docs["doc05"].split()
    docs["near_of_05"] = " ".join(base[:290] + ["changed"] * 10)  # Jaccard ~0.9
    docs["near_of_near"] = " ".join(base[:280] + ["other"] * 20)  # chains into the same cluster
    df = spark.createDataFrame(sorted(docs.items()), ["id", "content"])
    exact = {r["id"]: r["duplicate_of"] for r in exact_duplicates(df).collect()}
    assert exact == {"exact_of_03": "doc03"}
    near, _ = near_duplicates(df.where("id != 'exact_of_03'"), DedupConfig())
    got = {r["id"]: r["duplicate_of"] for r in near.collect()}
    assert got == {"near_of_05": "doc05", "near_of_near": "doc05"}
