"""The `preferences` stage: DPO's pairs from execution feedback, beside the pairs stage's preference files.

The problems are the mined supervised pairs that have doctests. Each problem's own body must
pass its tests in the sandbox first (else it is dropped as ``own_tests_fail``); then the
model DPO starts from (``dpo.init_from``) samples completions, the sandbox runs them, and a
passing and a failing completion of one prompt make a pair (:mod:`lathe.eval.preferences`).
Output: one parquet dataset of ``pair_id, source, prompt, suffix, chosen, rejected`` (``source``
``execution``, ``self-play`` or the file a pair was read from).

Self-play pairs (optional, ``preferences.self_play``) need no tests: the author's body of a
mined function is preferred to the model's own completion of its prompt (SPIN's assumption
that the human-written answer is the better one), so a model too small to pass any test
still gets a preference signal.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from lathe.core.models import current_version, model_to_tune, pinned
from lathe.core.stage import Stage, StageContext, StageResult, json_summary
from lathe.eval.config import EvalConfig, GenerationConfig, PreferencesConfig
from lathe.eval.generate import generate_samples
from lathe.eval.preferences import Problem, execution_pairs, guarded_imports, own_tests_pass

REPORT = "preferences.json"
COLUMNS = ("pair_id", "source", "prompt", "suffix", "chosen", "rejected")
EXECUTION, SELF_PLAY = "execution", "self-play"  # a pair's source (or the file it was read from)


class Starting(Protocol):
    """The part of the `dpo` section this stage reads: the model it samples from."""

    init_from: str


class PreferenceSections(Protocol):
    """The config sections the preferences stage reads."""

    preferences: PreferencesConfig
    eval: EvalConfig
    dpo: Starting


def observe_policy(cfg: PreferenceSections) -> dict[str, str]:
    """The version ``dpo.init_from`` names now: when production moves, the pairs are sampled again."""
    return {"policy": current_version(cfg.dpo.init_from)}


def mined_rows(sft: Path) -> list[dict[str, str]]:
    """The pairs stage's mined supervised pairs, by pair id."""
    table = pq.read_table(sft, columns=["pair_id", "source", "prompt", "response", "tests", "imports"]).to_pylist()
    return sorted((r for r in table if r["source"] == "mined"), key=lambda r: r["pair_id"])


def mined_problems(rows: list[dict[str, str]]) -> tuple[list[Problem], dict[str, str]]:
    """The mined pairs that have tests as problems (the file's imports as their setup), and each one's own body."""
    rows = [r for r in rows if r["tests"]]
    # The body and its doctests name what the module imported: the imports run first (those the sandbox has).
    problems = [Problem(r["pair_id"], r["prompt"], r["tests"], guarded_imports(r["imports"])) for r in rows]
    return problems, {r["pair_id"]: r["response"] for r in rows}


def sample(policy: Path, prompts: dict[str, str], generation: GenerationConfig) -> dict[str, list[str]]:
    """Completions of each prompt (by id), in sampling order."""
    completions: dict[str, list[str]] = {key: [] for key in prompts}
    every = generation.model_copy(update={"limit": None})  # the problems are chosen already (max_problems, self_play)
    for s in generate_samples(policy, {key: {"prompt": prompt} for key, prompt in prompts.items()}, every):
        completions[s["task_id"]].append(s["completion"])
    return completions


def execution_rows(
    ctx: StageContext[PreferenceSections], mined: list[dict[str, str]], policy: Path, counts: dict[str, int]
) -> list[dict[str, str]]:
    """Pairs from running sampled completions of the mined problems (whose own body passes) in the sandbox."""
    cfg = ctx.config.preferences
    workers = cfg.workers or ctx.config.eval.workers or os.cpu_count() or 1
    problems, own = mined_problems(mined)
    passing = own_tests_pass(problems, own, ctx.config.eval.sandbox, workers)
    counts |= {"problems": len(problems), "own_tests_fail": passing.count(False)}
    problems = [p for p, ok in zip(problems, passing) if ok][: cfg.max_problems]
    counts["problems_used"] = len(problems)
    ctx.console.print(f"execution: sampling {cfg.generation.n} completions for each of {len(problems)} problems")
    completions = sample(policy, {p.problem_id: p.prompt for p in problems}, cfg.generation)
    if cfg.author_solution:
        completions = {key: [own[key], *found] for key, found in completions.items()}
    made, outcome = execution_pairs(problems, completions, ctx.config.eval.sandbox, workers, cfg.max_pairs_per_problem)
    counts |= {("execution_pairs" if k == "pairs" else k): v for k, v in outcome.items()}
    return [
        {
            "pair_id": f"{p.problem_id}-{i}",
            "source": EXECUTION,
            "prompt": p.prompt,
            "suffix": "",
            "chosen": p.chosen,
            "rejected": p.rejected,
        }
        for i, p in enumerate(made)
    ]


def self_play_rows(
    cfg: PreferencesConfig, mined: list[dict[str, str]], policy: Path, counts: dict[str, int]
) -> list[dict[str, str]]:
    """Self-play pairs (SPIN, Chen et al. 2024): for mined pairs without tests, the author's body is preferred to
    the model's own completion of the same prompt (unless the two are the same)."""
    rows = [r for r in mined if not r["tests"]][: cfg.self_play]
    completions = sample(policy, {r["pair_id"]: r["prompt"] for r in rows}, cfg.generation.model_copy(update={"n": 1}))
    made = [
        {
            "pair_id": r["pair_id"],
            "source": SELF_PLAY,
            "prompt": r["prompt"],
            "suffix": "",
            "chosen": r["response"],
            "rejected": completions[r["pair_id"]][0],
        }
        for r in rows
    ]
    kept = [r for r in made if r["rejected"].strip() and r["rejected"].strip() != r["chosen"].strip()]
    counts |= {"self_play_prompts": len(rows), "self_play_empty_or_same": len(made) - len(kept), "self_play_pairs": len(kept)}
    return kept


def run_preferences(ctx: StageContext[PreferenceSections]) -> StageResult:
    """Sample, run, pair; add the preference files' pairs; write them all with the counts."""
    cfg, pairs = ctx.config.preferences, ctx.inputs["pairs"]
    rows = pq.read_table(pairs.path("preferences")).to_pylist()
    counts: dict[str, int] = {"file_pairs": len(rows)}
    if cfg.execution or cfg.self_play:
        policy = model_to_tune(
            pinned(ctx.config.dpo.init_from, ctx.observed.get("policy", "")), ctx.out_dir / "policy", "dpo.init_from"
        )
        mined = mined_rows(pairs.path("sft"))
        if cfg.execution:
            rows += execution_rows(ctx, mined, policy.path, counts)
        if cfg.self_play:
            rows += self_play_rows(cfg, mined, policy.path, counts)
    counts["pairs"] = len(rows)
    out = Path(ctx.outputs["pairs"])
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in COLUMNS])), out / "part-0.parquet")
    report = {
        "counts": counts,
        "policy": ctx.config.dpo.init_from,
        "policy_version": ctx.observed.get("policy", ""),
        "data_snapshot": pairs.details.get("data_snapshot"),
    }
    (ctx.out_dir / REPORT).write_text(json.dumps(report, indent=2))
    print_preferences(report, ctx.console)
    return StageResult(counts=counts, artifacts=[ctx.out_dir / REPORT], details=report)


def print_preferences(report: dict[str, Any], console: Console) -> None:
    """Problems, runs and pairs on one screen."""
    c = report["counts"]
    if "runs" in c:
        console.print(
            f"[bold]preferences[/]: {c['problems']} problems with doctests ({c['own_tests_fail']} whose own body fails them: "
            f"dropped; {c['problems_used']} used); {c['runs']} completions run, {c['passed']} passed; "
            f"{c['all_passed']} problems all passed, "
            f"{c['all_failed']} all failed, {c['no_completions']} without completions"
        )
    if "self_play_pairs" in c:
        console.print(
            f"self-play: {c['self_play_pairs']} of {c['self_play_prompts']} untested prompts paired the author's body "
            f"with the model's ({c['self_play_empty_or_same']} completions empty or the same: skipped)"
        )
    console.print(f"{c['pairs']} preference pairs ({c['file_pairs']} from files) for DPO from {report['policy']}")


PREFERENCES: Stage[Any] = Stage(
    name="preferences",
    inputs=("pairs",),
    section=lambda cfg: cfg.preferences,
    run=run_preferences,
    outputs={"pairs": "pairs"},
    summarize=json_summary(REPORT, print_preferences),
    headline=lambda m: (
        f"{m['counts']['pairs']} preference pairs"
        + (f" from {m['counts']['runs']} sandboxed completions" if "runs" in m["counts"] else "")
    ),
    observe=observe_policy,
    optional=True,
)
