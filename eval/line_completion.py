"""Line completion on the user's own held-out code (CodeXGLUE's line-level task, cut inside a line).

Each held-out document is cut at a seeded point inside one of its lines: the model reads everything
before the cursor and writes to the end of that line, left to right (no suffix). Scored by exact match
(whitespace-split tokens) and edit similarity (0-100), the measures of :mod:`lathe.eval.infilling`, per
language. This is the customization figure: a model retrained on new code should complete that code better.

The floor beside it, computed by the same code: the line above's text from the cursor's column on
(what copying the previous line would put there).
"""

from __future__ import annotations

import random
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lathe.core.errors import InputError
from lathe.eval.held_out import HeldOutDocument
from lathe.eval.infilling import edit_similarity, exact_match

MIN_LINE_CHARS = 4  # a line shorter than this (stripped) says too little to be a task
FLOOR = "previous-line"


@dataclass(frozen=True)
class LineTask:
    """Complete ``target`` (the rest of a line) after ``context`` (the document up to the cursor)."""

    task_id: str  # <document id>:<line number>:<column>
    language: str
    context: str
    target: str  # without its newline
    previous: str  # the nearest non-blank line above, from the cursor's column on (the floor's completion)


def cuts(doc: HeldOutDocument, seed: int) -> Iterator[LineTask]:
    """The document's tasks in a fixed order: its lines with at least MIN_LINE_CHARS non-blank characters (the
    first line aside: it has no context), shuffled by ``seed`` and the document's bytes, each cut at a column
    drawn between its indentation and its last non-blank character (so the rest is never empty)."""
    lines = doc.text.split("\n")
    eligible = [i for i, line in enumerate(lines) if i > 0 and len(line.strip()) >= MIN_LINE_CHARS]
    key = zlib.crc32(doc.text.encode("utf-8"))
    random.Random(key ^ seed).shuffle(eligible)
    for i in eligible:
        line = lines[i].rstrip()
        indent = len(line) - len(line.lstrip())
        column = random.Random(f"{key}:{seed}:{i}").randrange(indent, len(line))
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        yield LineTask(
            task_id=f"{doc.id}:{i + 1}:{column}",
            language=doc.language,
            context="\n".join(lines[:i]) + "\n" + line[:column],
            target=line[column:],
            previous=above[column:].rstrip(),
        )


def line_tasks(documents: Sequence[HeldOutDocument], n: int, seed: int) -> list[LineTask]:
    """``n`` tasks spread over the documents: each document's first cut in the documents' order, then each one's
    second, and so on (few held-out documents, such as a small day's new files, still give ``n`` tasks)."""
    streams = [cuts(doc, seed) for doc in documents]
    tasks: list[LineTask] = []
    while streams and len(tasks) < n:
        live = []
        for stream in streams:
            if len(tasks) >= n:
                break
            if (task := next(stream, None)) is not None:
                tasks.append(task)
                live.append(stream)
        streams = live
    return tasks


def complete_lines(
    model_dir: Path, tasks: Sequence[LineTask], max_new_tokens: int = 32, batch_size: int = 8, device: str = "cpu"
) -> list[str]:
    """Greedy completions of each task's line by the HF causal LM in ``model_dir``, cut at the first newline.

    The prompt is ``<|endoftext|>`` and the context's tokens, the context cut from the left to leave
    ``max_new_tokens`` of the model's window, as the served engine cuts a long prompt."""
    from transformers import AutoTokenizer

    from lathe.core.quant import load_causal_lm
    from lathe.eval.generate import greedy_continuations

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.eos_token_id is None:
        raise InputError(f"{model_dir}: the tokenizer has no end-of-text token to start a document after")
    model = load_causal_lm(model_dir, device)
    window = int(model.config.max_position_embeddings)
    new_tokens = min(max_new_tokens, window // 2)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    completions: list[str] = []
    for start in range(0, len(tasks), batch_size):
        batch = tasks[start : start + batch_size]
        prompts = [
            [tok.eos_token_id, *tok.encode(t.context, add_special_tokens=False, split_special_tokens=True)][
                -(window - new_tokens) :
            ]
            for t in batch
        ]
        rows = greedy_continuations(
            model, prompts, pad_id, new_tokens, eos_token_id=tok.eos_token_id, stop_strings=["\n"], tokenizer=tok
        )
        for row in rows:
            text = tok.decode([t for t in row if t != pad_id], skip_special_tokens=True)
            completions.append(text.split("\n", 1)[0])
    return completions


def score_lines(tasks: Sequence[LineTask], completions: Sequence[str]) -> dict[str, Any]:
    """Exact match (0-1) and edit similarity (0-100), overall and per language, with per-task results."""
    if len(tasks) != len(completions):
        raise InputError(f"{len(completions)} completions for {len(tasks)} line-completion tasks")
    if not tasks:
        raise InputError("no line-completion tasks to score")
    results: list[dict[str, Any]] = [
        {
            "task_id": t.task_id,
            "language": t.language,
            "completion": c,
            "exact_match": exact_match(c, t.target),
            "edit_similarity": edit_similarity(c, t.target),
        }
        for t, c in zip(tasks, completions)
    ]
    by_language: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_language[r["language"]].append(r)

    def figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "tasks": len(rows),
            "exact_match": float(np.mean([r["exact_match"] for r in rows])),
            "edit_similarity": float(np.mean([r["edit_similarity"] for r in rows])),
        }

    return {
        **figures(results),
        "languages": {lang: figures(rows) for lang, rows in sorted(by_language.items())},
        "results": results,
    }


def floor_completions(tasks: Sequence[LineTask]) -> list[str]:
    """The floor's completions: the line above from the cursor's column on."""
    return [t.previous for t in tasks]
