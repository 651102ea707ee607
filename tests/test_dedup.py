"""Dedup: pure shingling, MinHash and band parts, and the Spark jobs on planted duplicates."""

from __future__ import annotations

import random

import pytest

from lathe.core.errors import ConfigError
from lathe.data.config import DedupConfig
from lathe.data.dedup import (
    candidate_pairs,
    collision_probability,
    components_on_driver,
    connected_components,
    exact_duplicates,
    exact_hash,
    exact_jaccard,
    lsh_params,
    minhash,
    near_duplicates,
    shingle_hashes,
    shingles,
    signatures,
    sketch,
)


def test_exact_hash_ignores_line_endings_and_trailing_whitespace_only() -> None:
    a = "def f():\n    return 1\n"
    assert exact_hash(a) == exact_hash("def f():  \r\n    return 1\r\n\n")
    assert exact_hash(a) != exact_hash("def f():\n  return 1\n")  # indentation is meaningful


def _words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"w{rng.randrange(10_000)}" for _ in range(n)]


def _jaccard(a: str, b: str) -> float:
    """The reference: Jaccard similarity of the shingle sets themselves."""
    sa, sb = shingles(a, 5), shingles(b, 5)
    return len(sa & sb) / len(sa | sb)


def _estimate(a: str, b: str, cfg: DedupConfig) -> float:
    """What verification used to trust: the share of equal MinHash values over all permutations."""
    ma = minhash(shingle_hashes(a, cfg.ngram), cfg.num_perm, cfg.seed)
    mb = minhash(shingle_hashes(b, cfg.ngram), cfg.num_perm, cfg.seed)
    return float((ma == mb).mean())


@pytest.mark.parametrize("keep", [0.95, 0.8, 0.5])
def test_shingle_hashes_give_the_exact_jaccard_and_minhash_estimates_it(keep: float) -> None:
    base = _words(400, 1) + ["w1"] * 20  # repeated windows count once
    other = [w if random.Random(i).random() < keep else f"x{i}" for i, w in enumerate(base)]
    a, b = " ".join(base), " ".join(other)
    ha, hb = shingle_hashes(a, 5), shingle_hashes(b, 5)
    assert len(ha) == len(shingles(a, 5)) and (ha[1:] > ha[:-1]).all()  # sorted, distinct, no collision
    true = _jaccard(a, b)
    assert exact_jaccard(ha.tobytes(), hb.tobytes()) == pytest.approx(true, abs=1e-12)
    assert exact_jaccard(hb.tobytes(), ha.tobytes()) == pytest.approx(true, abs=1e-12)
    assert abs(_estimate(a, b, DedupConfig()) - true) < 0.1


def test_sketch_edge_cases_and_determinism() -> None:
    cfg = DedupConfig()
    assert sketch("   ", cfg) is None
    short = sketch("just three words", cfg)
    assert short is not None and len(short[0]) == 8  # one shingle of all its words
    assert exact_jaccard(short[0], sketch("just three  words!", cfg)[0]) == 1.0
    assert exact_jaccard(short[0], sketch("just three other words", cfg)[0]) == 0.0
    bands, _ = lsh_params(cfg.threshold, cfg.num_perm, cfg.lsh_recall)
    text = " ".join(_words(50, 3))
    assert sketch(text, cfg) == sketch(text, cfg) and len(sketch(text, cfg)[1]) == bands
    assert all(0 <= key < 2**63 for key in sketch(text, cfg)[1])  # Spark LongType


def test_lsh_params_reach_the_recall_at_the_threshold() -> None:
    bands, rows = lsh_params(0.7, 256, 0.995)
    assert bands * rows <= 256
    assert collision_probability(0.7, bands, rows) >= 0.995
    assert collision_probability(0.3, bands, rows) < 0.1  # far-off pairs rarely reach verification
    assert lsh_params(0.9, 256, 0.995)[1] > rows  # a stricter threshold needs longer bands
    assert collision_probability(0.7, *lsh_params(0.7, 256, 0.999)) >= 0.999
    with pytest.raises(ConfigError, match="num_perm"):
        lsh_params(0.7, 4, 0.999)


def test_components_on_driver_map_to_the_smallest_id_whatever_the_order() -> None:
    pairs = [("g", "f"), ("b", "a"), ("f", "e"), ("c", "b"), ("e", "d"), ("x", "y")]
    want = {"b": "a", "c": "a", "e": "d", "f": "d", "g": "d", "y": "x"}
    for seed in range(5):
        random.Random(seed).shuffle(pairs)
        assert components_on_driver(pairs) == want
    assert components_on_driver([]) == {}


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
    near, iterations = near_duplicates(df.where("id != 'exact_of_03'"), DedupConfig())
    got = {r["id"]: r["duplicate_of"] for r in near.collect()}
    assert got == {"near_of_05": "doc05", "near_of_near": "doc05"}
    assert iterations == 0  # two verified pairs: clustered on the driver


def _pair_near(threshold: float, cfg: DedupConfig, above: bool) -> tuple[str, str, float]:
    """A pair whose exact Jaccard sits just above (or just below) ``threshold`` while the MinHash
    estimate lands on the other side: the pairs an estimate-based verification gets wrong."""
    for seed in range(500):
        rng = random.Random(seed)
        base = _words(400, 1000 + seed)
        other = list(base)
        positions = rng.sample(range(len(base)), len(base))
        previous = None
        for pos in positions:  # mutate word by word until the Jaccard crosses the threshold
            other[pos] = f"y{pos}"
            b = " ".join(other)
            if _jaccard(" ".join(base), b) < threshold:
                break
            previous = b
        candidate = previous if above else b
        if candidate is None:
            continue
        a = " ".join(base)
        true, est = _jaccard(a, candidate), _estimate(a, candidate, cfg)
        if (true >= threshold) == above and (est >= threshold) != above:
            return a, candidate, true
    raise AssertionError("no such pair in 500 seeds")


@pytest.mark.spark
def test_verification_is_exact_on_both_sides_of_the_threshold(spark) -> None:
    cfg = DedupConfig()
    hi_a, hi_b, hi_j = _pair_near(cfg.threshold, cfg, above=True)
    lo_a, lo_b, lo_j = _pair_near(cfg.threshold, cfg, above=False)
    assert cfg.threshold <= hi_j < cfg.threshold + 0.02 and cfg.threshold - 0.02 < lo_j < cfg.threshold
    docs = {"hi_a": hi_a, "hi_b": hi_b, "lo_a": lo_a, "lo_b": lo_b, **{f"z{i}": " ".join(_words(300, i)) for i in range(5)}}
    df = spark.createDataFrame(sorted(docs.items()), ["id", "content"])
    candidates = {(r["src"], r["dst"]) for r in candidate_pairs(signatures(df, cfg), cfg.max_bucket_pairs).collect()}
    assert ("lo_a", "lo_b") in candidates  # the LSH step lets it through: only verification can reject it
    near, _ = near_duplicates(df, cfg)
    assert {r["id"]: r["duplicate_of"] for r in near.collect()} == {"hi_b": "hi_a"}


@pytest.mark.spark
def test_driver_union_find_and_spark_rounds_give_the_same_clusters(spark) -> None:
    docs = {f"doc{i:02d}": " ".join(_words(300, 50 + i)) for i in range(12)}
    for root in ("doc02", "doc07"):
        words = docs[root].split()
        for step in range(1, 4):  # a chain: each link ~0.87 to the previous, the ends well under 0.7
            words = words[:-25] + [f"{root}_{step}_{k}" for k in range(25)]
            words = words[25:] + words[:25]
            docs[f"{root}_v{step}"] = " ".join(words)
    df = spark.createDataFrame(sorted(docs.items()), ["id", "content"]).cache()
    on_driver, driver_rounds = near_duplicates(df, DedupConfig())
    in_spark, spark_rounds = near_duplicates(df, DedupConfig(max_driver_pairs=0))
    got = {r["id"]: r["duplicate_of"] for r in on_driver.collect()}
    assert got == {r["id"]: r["duplicate_of"] for r in in_spark.collect()}
    assert (driver_rounds, spark_rounds >= 2) == (0, True)
    assert got == {f"{root}_v{s}": root for root in ("doc02", "doc07") for s in (1, 2, 3)}
    assert _jaccard(docs["doc02"], docs["doc02_v3"]) < 0.7  # joined only through the chain
