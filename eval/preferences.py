"""Preference pairs from execution feedback: completions that pass a problem's tests are
preferred to completions of the same prompt that fail them.

Each problem is a prompt (a signature and docstring, as mined from clean data) with
executable tests (its doctests); each completion is a candidate body. Every completion runs
in the eval sandbox as ``prompt + completion + tests`` followed by the proof of completion,
so only a program whose tests all ran to their end counts as passing (an early exit, a
printed "ok" or a killed parent cannot). A prompt with both outcomes gives pairs of one
passing (chosen) and one failing (rejected) completion; prompts with only one outcome give
none and are counted by why.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lathe.eval.config import SandboxConfig
from lathe.eval.languages import PYTHON
from lathe.eval.sandbox import Sandbox


@dataclass(frozen=True)
class Problem:
    """A prompt with tests that decide its completions: ``prompt + completion + tests`` is a program."""

    problem_id: str
    prompt: str
    tests: str
    setup: str = ""  # run before the prompt, never shown to the model (the module's imports)


@dataclass(frozen=True)
class PreferencePair:
    """One prompt's passing (chosen) and failing (rejected) completion."""

    problem_id: str
    prompt: str
    chosen: str
    rejected: str

    def as_dict(self) -> dict[str, str]:
        """The ``prompt/chosen/rejected`` record DPO reads (the problem id kept for tracing)."""
        return {"problem_id": self.problem_id, "prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


def program(problem: Problem, completion: str) -> str:
    """The Python program that decides one completion: setup, prompt, completion, tests, then the proof."""
    return problem.setup + problem.prompt + completion + "\n\n" + problem.tests + "\n\n" + PYTHON.proof


def guarded_imports(imports: str) -> str:
    """Import statements (one per line) each wrapped so that one the sandbox cannot resolve is skipped: a body
    that does not need the missing module still runs, one that does fails on its name."""
    lines = [line for line in imports.splitlines() if line.strip()]
    future = [line for line in lines if line.startswith("from __future__ ")]  # must open the file, as they are
    return "".join(f"{line}\n" for line in future) + "".join(
        f"try:\n    {line}\nexcept ImportError:\n    pass\n" for line in lines if line not in future
    )


def run_programs(programs: list[str], sandbox_cfg: SandboxConfig, workers: int) -> list[bool]:
    """Whether each program ran to its end (its proof of completion) in the sandbox, in order."""
    if not programs:
        return []
    with Sandbox(sandbox_cfg) as sandbox, ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(lambda code: sandbox.run(code).completed, programs))


def own_tests_pass(problems: list[Problem], solutions: dict[str, str], sandbox_cfg: SandboxConfig, workers: int) -> list[bool]:
    """Whether each problem's tests pass with its own solution (a mined function's own body): a test that
    fails its own code (an outdated doctest, one that needs files or the network) cannot judge others'."""
    return run_programs([program(p, solutions[p.problem_id]) for p in problems], sandbox_cfg, workers)


def execution_pairs(
    problems: Iterable[Problem],
    completions: dict[str, list[str]],
    sandbox_cfg: SandboxConfig,
    workers: int,
    max_pairs_per_problem: int = 4,
) -> tuple[list[PreferencePair], dict[str, int]]:
    """Pairs from running every completion of every problem in the sandbox, and the counts.

    ``completions`` maps a problem id to its sampled completions (a problem without any is
    counted as ``no_completions``). Per problem, at most ``max_pairs_per_problem`` pairs, each
    completion used at most once on its side, in sampling order, so one prompt cannot
    dominate the preference data. Counts: ``runs``, ``passed``, ``failed``, ``pairs`` and the
    problems that give no pair: ``no_completions``, ``all_passed``, ``all_failed``.
    """
    problems = list(problems)
    jobs = [(p, c) for p in problems for c in completions.get(p.problem_id, [])]
    outcomes = run_programs([program(*job) for job in jobs], sandbox_cfg, workers)
    by_problem: dict[str, tuple[list[str], list[str]]] = {p.problem_id: ([], []) for p in problems}
    for (problem, completion), passed in zip(jobs, outcomes):
        by_problem[problem.problem_id][0 if passed else 1].append(completion)
    counts = {
        "runs": len(jobs),
        "passed": sum(outcomes),
        "failed": len(jobs) - sum(outcomes),
        "pairs": 0,
        "no_completions": 0,
        "all_passed": 0,
        "all_failed": 0,
    }
    pairs: list[PreferencePair] = []
    for problem in problems:
        passing, failing = by_problem[problem.problem_id]
        if not passing and not failing:
            counts["no_completions"] += 1
        elif not failing:
            counts["all_passed"] += 1
        elif not passing:
            counts["all_failed"] += 1
        for chosen, rejected in itertools.islice(zip(passing, failing), max_pairs_per_problem):
            pairs.append(PreferencePair(problem.problem_id, problem.prompt, chosen, rejected))
    counts["pairs"] = len(pairs)
    return pairs, counts
