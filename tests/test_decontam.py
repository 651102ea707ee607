"""Decontamination by long n-grams: the boundary at n, the HumanEval index, the Spark step's drops and counts."""

from __future__ import annotations

import textwrap

import pytest

from lathe.core.errors import ConfigError, InputError
from lathe.data.decontam import (
    CONTAMINATED,
    NgramIndex,
    drop_contaminated,
    humaneval_texts,
    mark_contaminated,
    ngram_hashes,
    tokens,
)
from lathe.eval.humaneval import problems

REFERENCE = " ".join(f"w{i}" for i in range(30))


def test_tokens_are_words_so_formatting_and_punctuation_never_hide_a_copy() -> None:
    assert tokens("def f(x):\n    return x+1  # one") == ["def", "f", "x", "return", "x", "1", "one"]
    assert ngram_hashes("a(b, c)", 3).tolist() == ngram_hashes("a b\n\tc", 3).tolist()
    assert len(ngram_hashes("a b c", 4)) == 0  # shorter than n: no n-grams at all


@pytest.mark.parametrize(("shared", "contaminated"), [(9, False), (10, True), (11, True)])
def test_a_row_is_contaminated_from_n_shared_consecutive_tokens(shared: int, contaminated: bool) -> None:
    index = NgramIndex.from_texts([REFERENCE])  # n = 10 by default
    copied = " ".join(f"w{i}" for i in range(7, 7 + shared))
    assert index.contaminated(f"x = 1\n{copied}\nreturn y") is contaminated


def test_shared_tokens_must_be_consecutive_and_in_order() -> None:
    index = NgramIndex.from_texts([REFERENCE], n=4)
    assert index.contaminated("w3 w4 w5 w6")
    assert not index.contaminated("w3 w4 w5 other w6")
    assert not index.contaminated("w6 w5 w4 w3")


def test_reference_texts_shorter_than_n_add_nothing_and_an_empty_index_matches_nothing() -> None:
    assert len(NgramIndex.from_texts(["too short to count"], n=10)) == 0
    assert not NgramIndex.from_texts([], n=10).contaminated(REFERENCE)
    with pytest.raises(ConfigError, match="n-gram length 0 is too short"):
        NgramIndex.from_texts([REFERENCE], n=0)


def solution_row() -> str:
    """A training row that copies HumanEval/0's canonical solution under a signature of its own."""
    problem = problems()["HumanEval/0"]
    body = textwrap.dedent(problem["canonical_solution"])
    return "def close_pairs(values, limit):\n" + textwrap.indent(body, "    ")


UNRELATED = '''def parse_header(line: str) -> tuple[str, str]:
    """Split an HTTP header line into its name and value."""
    name, _, value = line.partition(":")
    return name.strip().lower(), value.strip()
'''


def test_humaneval_reference_texts_catch_a_copied_solution_and_spare_unrelated_code() -> None:
    loaded = problems()
    texts = humaneval_texts(loaded)
    assert len(texts) == 2 * len(loaded) == 328
    index = NgramIndex.from_texts(texts)
    assert index.contaminated(solution_row())
    assert index.contaminated(loaded["HumanEval/12"]["test"])
    assert not index.contaminated(UNRELATED)
    with pytest.raises(InputError, match="'HumanEval/x' lacks prompt, canonical_solution or test"):
        humaneval_texts({"HumanEval/x": {"prompt": "def f():\n"}})


@pytest.mark.spark
def test_drop_contaminated_drops_and_counts_copied_rows_and_keeps_the_rest(spark) -> None:
    index = NgramIndex.from_texts(humaneval_texts(problems()))
    seam = " ".join(f"w{i}" for i in range(10))
    rows = [
        ("copied", "Check the list.", solution_row()),
        ("clean", "Parse a header.", UNRELATED),
        ("no-response", "Nothing here.", None),
        ("seam", seam[:14], seam[14:]),  # ten words only across the prompt/response seam
    ]
    df = spark.createDataFrame(rows, "pair_id string, prompt string, response string")
    kept, dropped = drop_contaminated(df, index, ["prompt", "response"])
    assert kept.columns == df.columns
    assert sorted(r.pair_id for r in kept.collect()) == ["clean", "no-response", "seam"]
    assert [(r.pair_id, r.reason) for r in dropped.collect()] == [("copied", CONTAMINATED)]
    assert kept.count() + dropped.count() == df.count()  # every row is kept or dropped with a reason

    _, across = drop_contaminated(df, NgramIndex.from_texts([seam]), ["prompt", "response"])
    assert [r.pair_id for r in across.collect()] == ["seam"]


@pytest.mark.spark
def test_mark_contaminated_keeps_earlier_reasons_and_names_bad_columns(spark) -> None:
    index = NgramIndex.from_texts([REFERENCE])
    df = spark.createDataFrame(
        [("a", REFERENCE, "too_long"), ("b", REFERENCE, None), ("c", "fresh text", None)], "id string, text string, reason string"
    )
    marked = {r.id: r.reason for r in mark_contaminated(df, index, ["text"]).collect()}
    assert marked == {"a": "too_long", "b": CONTAMINATED, "c": None}
    kept, _ = drop_contaminated(df, index, ["text"])
    assert kept.columns == df.columns and [r.id for r in kept.collect()] == ["c"]
    with pytest.raises(InputError, match=r"columns \['text', 'body'\] must name one or more text columns"):
        mark_contaminated(df, index, ["text", "body"])


@pytest.mark.spark
def test_the_xray_reports_pretraining_files_that_overlap_humaneval(spark) -> None:
    from lathe.data.decontam import contamination_report, humaneval_index

    index = humaneval_index(10)
    assert len(index) == len(NgramIndex.from_texts(humaneval_texts(problems())))  # the package's own problems, as eval reads them
    rows = [
        ("b/copy.py", "python", "import math\n" + solution_row()),
        ("a/clean.py", "python", UNRELATED),
        ("c/copy.js", "javascript", "// " + solution_row()),
        ("d/empty.py", "python", None),
    ]
    report = contamination_report(spark.createDataFrame(rows, "path string, lang string, content string"), index)
    assert report == {
        "ngram": 10,
        "files": 2,
        "by_language": {"javascript": 1, "python": 1},
        "examples": ["b/copy.py", "c/copy.js"],
    }
