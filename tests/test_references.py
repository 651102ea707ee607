"""Each translated HumanEval set is proven by its reference solutions, in the real sandbox: they pass,
and a wrong solution set (each problem's body returning the type's default value) fails.

Compiling costs ~1-2 s per sample on these machines (javac, g++, rustc, tsc in the sandbox), so
`make test` scores a fixed, evenly spread subset of the compiled languages' problems, and all of
JavaScript's; `benchmarks/eval_bench.py` (`make bench`) scores every reference of every language.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lathe.eval.benchmarks import BENCHMARKS
from lathe.eval.config import EvalConfig
from lathe.eval.humaneval import ToolchainMissing, score
from lathe.eval.languages import LANGUAGES
from tests.conftest import REPO

pytestmark = pytest.mark.integration  # every reference solution of a language compiled and run in the sandbox

CFG = EvalConfig(ks=[1], workers=2, sandbox={"wall_s": 30.0, "cpu_s": 20})
# problems scored per language in `make test` (None: all); the wrong set is the first WRONG of those
SUBSET = {"humaneval-js": None, "humaneval-ts": 24, "humaneval-java": 12, "humaneval-cpp": 12, "humaneval-rust": 16}
WRONG = 4


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
    assert set(references) == set(problems), (
        f"{benchmark}: problems without a reference: {sorted(set(problems) - set(references))}"
    )
    chosen = spread(list(problems), SUBSET[benchmark])
    passed = score([{"task_id": t, "completion": references[t]} for t in chosen], CFG, show_progress=False, benchmark=benchmark)
    failures = [r for r in passed["results"] if not r["passed"]]
    assert passed["pass@1"] == 1.0 and passed["problems"] == len(chosen), failures[:3]
    wrong = score(
        [{"task_id": t, "completion": problems[t]["wrong_solution"]} for t in chosen[:WRONG]],
        CFG,
        show_progress=False,
        benchmark=benchmark,
    )
    assert wrong["pass@1"] == 0.0
    # they fail the checks (not the compiler): the wrong set is well-typed, only wrong
    assert all(r["reason"].startswith("AssertionError") for r in wrong["results"]), wrong["results"]


def test_cli_scores_another_language_and_a_missing_toolchain_is_one_line(tmp_path: Path, monkeypatch) -> None:
    bench = BENCHMARKS.get("humaneval-rust")
    first, second = list(bench.problems())[:2]
    samples = tmp_path / "rust.jsonl"
    samples.write_text(
        json.dumps({"task_id": first, "completion": bench.references()[first]})
        + "\n"
        + json.dumps({"task_id": second, "completion": "    Default::default()\n"})
        + "\n"
    )
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lathe.pipelines.cli",
            "eval",
            "score",
            "--benchmark",
            "humaneval-rust",
            "--samples",
            str(samples),
            "--output",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())["results"]
    assert [r["status"] for r in results] == ["passed", "failed"] and results[1]["reason"].startswith("AssertionError: test 1")
    # a compile error is a failure that says so
    broken = score(
        [{"task_id": first, "completion": '    let x: i64 = "no";\n'}], CFG, show_progress=False, benchmark="humaneval-rust"
    )
    assert broken["results"][0]["reason"].startswith("compile error: error[E0308]: mismatched types"), broken["results"]
    # no rustc: the scorer refuses in one line naming the package; the eval stage skips the language instead
    without = dataclasses.replace(
        LANGUAGES.get("rust"), toolchain=(("/nonexistent/rustc", "install Debian's rustc (make system-deps)"),)
    )
    monkeypatch.setitem(LANGUAGES._items, "rust", without)
    with pytest.raises(ToolchainMissing, match=r"^humaneval-rust: rust needs /nonexistent/rustc: install Debian's rustc"):
        score([{"task_id": first, "completion": ""}], CFG, show_progress=False, benchmark="humaneval-rust")
