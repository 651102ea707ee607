"""Each translated HumanEval set is proven by its reference solutions, in the real sandbox: they pass,
and a wrong solution set (each problem's body returning the type's default value) fails.

Compiling costs ~1-2 s per sample on these machines (javac, g++, rustc, tsc in the sandbox), so
`make test` scores a fixed, evenly spread subset of the compiled languages' problems, and all of
JavaScript's; `benchmarks/eval_bench.py` (`make bench`) scores every reference of every language.
"""

from __future__ import annotations

import pytest

from lathe.eval.benchmarks import BENCHMARKS
from lathe.eval.config import EvalConfig
from lathe.eval.humaneval import score

CFG = EvalConfig(ks=[1], workers=2, sandbox={"wall_s": 30.0, "cpu_s": 20})
# problems scored per language in `make test` (None: all); the wrong set is the first WRONG of those
SUBSET = {"humaneval-js": None, "humaneval-ts": 32, "humaneval-java": 16, "humaneval-cpp": 16, "humaneval-rust": 24}
WRONG = 8


def spread(task_ids: list[str], n: int | None) -> list[str]:
    """``n`` task ids evenly spread over the set (all of them for None)."""
    if n is None or n >= len(task_ids):
        return task_ids
    step = len(task_ids) / n
    return [task_ids[int(i * step)] for i in range(n)]


@pytest.mark.parametrize("benchmark", list(SUBSET))
def test_references_pass_and_a_wrong_set_fails(benchmark: str) -> None:
    bench = BENCHMARKS.get(benchmark)
    problems, references = bench.problems(), bench.references()
    assert set(references) == set(problems), f"{benchmark}: problems without a reference: {sorted(set(problems) - set(references))}"
    chosen = spread(list(problems), SUBSET[benchmark])
    passed = score([{"task_id": t, "completion": references[t]} for t in chosen], CFG, show_progress=False, benchmark=benchmark)
    failures = [r for r in passed["results"] if not r["passed"]]
    assert passed["pass@1"] == 1.0 and passed["problems"] == len(chosen), failures[:3]
    wrong = score([{"task_id": t, "completion": problems[t]["wrong_solution"]} for t in chosen[:WRONG]], CFG,
                  show_progress=False, benchmark=benchmark)
    assert wrong["pass@1"] == 0.0
    # they fail the checks (not the compiler): the wrong set is well-typed, only wrong
    assert all(r["reason"].startswith("AssertionError") for r in wrong["results"]), wrong["results"]
