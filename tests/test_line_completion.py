"""Line completion on held-out code: the cuts, the scoring per language, the floor, the held-out documents as
the shards stage keeps them, and a model's completions (a micro model: the mechanics, not the quality)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lathe.core.errors import InputError
from lathe.eval.config import BitsPerByteConfig, EvalConfig
from lathe.eval.held_out import ORDER_SALT, HeldOutDocument, held_out_documents
from lathe.eval.line_completion import MIN_LINE_CHARS, complete_lines, cuts, floor_completions, line_tasks, score_lines
from lathe.eval.quality import line_floor, measure_quality
from lathe.tokenizer.splits import stable_fraction
from lathe.tokenizer.streams import HELD_OUT

SOURCE = "import os\n\n\ndef walk(root):\n    for name in os.listdir(root):\n        yield os.path.join(root, name)\n"


def test_a_cut_is_inside_a_line_and_the_context_is_everything_before_it() -> None:
    doc = HeldOutDocument("a.py", "python", SOURCE)
    lines = SOURCE.split("\n")
    eligible = {i + 1 for i, line in enumerate(lines) if i > 0 and len(line.strip()) >= MIN_LINE_CHARS}
    for seed in range(20):
        tasks = list(cuts(doc, seed))
        assert tasks == list(cuts(doc, seed))  # fixed by the seed and the document
        assert sorted(int(t.task_id.split(":")[1]) for t in tasks) == sorted(eligible)  # each eligible line once
        for task in tasks:
            _, line_no, column = task.task_id.rsplit(":", 2)
            line = lines[int(line_no) - 1]
            # the context ends at the cursor, the target is the rest of the line: together, the document to the line's end
            assert task.context + task.target == "\n".join(lines[: int(line_no)]).rstrip()
            assert task.target.strip() and "\n" not in task.target and int(column) >= len(line) - len(line.lstrip())
            above = next(lines[j] for j in range(int(line_no) - 2, -1, -1) if lines[j].strip())
            assert task.previous == above[int(column) :].rstrip() and task.language == "python"
    assert len({next(cuts(doc, seed)) for seed in range(20)}) > 3  # seeds move the first cut
    assert list(cuts(HeldOutDocument("b", "c", "x\n\n  \nab\n"), 0)) == []  # no line after the first long enough


def test_tasks_are_spread_over_the_documents() -> None:
    docs = [HeldOutDocument(f"d{i}", "python", SOURCE.replace("walk", f"walk{i}")) for i in range(3)]
    docs.insert(1, HeldOutDocument("short", "c", "a\nb\n"))  # no task to give
    first = line_tasks(docs, 2, 0)
    assert [t.task_id.split(":")[0] for t in first] == ["d0", "d1"]
    # more tasks than documents: each document's first cut, then each one's second, ...
    spread = line_tasks(docs, 7, 0)
    assert [t.task_id.split(":")[0] for t in spread] == ["d0", "d1", "d2"] * 2 + ["d0"]
    assert spread[:3] == line_tasks(docs, 3, 0) and spread[3] == list(cuts(docs[0], 0))[1]
    assert len(line_tasks(docs, 100, 0)) == 3 * len(list(cuts(docs[0], 0)))  # every cut of every document
    assert len({t.task_id for t in line_tasks(docs, 100, 0)}) == 3 * len(list(cuts(docs[0], 0)))


def test_scores_per_language_and_the_previous_line_floor() -> None:
    a = next(cuts(HeldOutDocument("a", "python", SOURCE), 3))
    b = next(cuts(HeldOutDocument("b", "c", "int f(void) {\n    return 41 + 1;\n}\n"), 3))
    scored = score_lines([a, b], [a.target, "zzz"])
    assert scored["tasks"] == 2 and scored["exact_match"] == 0.5
    assert scored["languages"]["python"] == {"tasks": 1, "exact_match": 1.0, "edit_similarity": 100.0}
    assert scored["languages"]["c"]["exact_match"] == 0.0 and scored["languages"]["c"]["edit_similarity"] < 100.0
    assert [r["task_id"] for r in scored["results"]] == [a.task_id, b.task_id]
    assert floor_completions([a, b]) == [a.previous, b.previous]
    assert line_floor([a, b]) == {k: v for k, v in score_lines([a, b], [a.previous, b.previous]).items() if k != "results"}
    with pytest.raises(InputError, match="1 completions for 2 line-completion tasks"):
        score_lines([a, b], ["x"])


def _stream(root: Path, name: str, rows: list[tuple[str, str, str]]) -> str:
    uri = root / name
    (uri / HELD_OUT).mkdir(parents=True)
    pd.DataFrame(rows, columns=["id", "lang", "content"]).assign(path="p").to_parquet(uri / HELD_OUT / "part-0.parquet")
    return str(uri)


def test_held_out_documents_come_from_every_validation_stream_in_a_seeded_order(tmp_path: Path) -> None:
    first = _stream(tmp_path, "0000", [(f"a{i}", "python", f"x = {i}\n") for i in range(6)])
    second = _stream(tmp_path, "0001", [("b0", "c", "int x;\n"), ("b1", "c", "")])
    trained = {"validation": {"val": [first, second]}}
    docs, why = held_out_documents(trained, tmp_path, BitsPerByteConfig(documents=100))
    assert why is None and {d.id for d in docs} == {*(f"a{i}" for i in range(6)), "b0"}  # the empty one is not a document
    assert [d.id for d in docs] == sorted((d.id for d in docs), key=lambda i: stable_fraction(i, ORDER_SALT))
    assert {d.id: d.language for d in docs}["b0"] == "c"
    # the budgets: documents, then bytes (the document that crosses it is the last)
    assert [d.id for d in held_out_documents(trained, tmp_path, BitsPerByteConfig(documents=3))[0]] == [d.id for d in docs[:3]]
    assert len(held_out_documents(trained, tmp_path, BitsPerByteConfig(documents=100, max_bytes=7))[0]) == 2
    assert held_out_documents({"validation": {"val": [str(tmp_path / "gone")]}}, tmp_path, BitsPerByteConfig()) == (
        [],
        f"validation split {tmp_path / 'gone'}/val is gone",
    )
    assert held_out_documents({"validation": {"val": ["s3://b/0000"]}}, tmp_path, BitsPerByteConfig())[1] == (
        "validation stream s3://b/0000 is in an object store; only local streams are read back"
    )


@pytest.mark.integration
def test_a_model_completes_each_line_and_is_measured_per_language(hf_model: Path) -> None:
    docs = [
        HeldOutDocument("a", "python", SOURCE),
        HeldOutDocument("b", "c", "int add(int a, int b) {\n    return a + b;\n}\n" * 30),  # longer than the 128-token window
    ]
    tasks = line_tasks(docs, 8, 0)
    completions = complete_lines(hf_model, tasks, max_new_tokens=6, batch_size=3)
    assert len(tasks) == len(completions) == 8 and all("\n" not in c for c in completions)
    quality = measure_quality(hf_model, [], docs, EvalConfig())
    lines, bpb = quality["line_completion"], quality["bits_per_byte"]
    # the eval stage's defaults: 32 tasks over the two documents, greedy (the same completions again)
    assert [r["completion"] for r in lines["results"]] == complete_lines(hf_model, line_tasks(docs, 32, 0), 32, 8)
    assert set(lines["languages"]) == set(bpb["languages"]) == {"c", "python"}
    assert bpb["languages"]["python"]["bytes"] == len(SOURCE) and bpb["bytes"] == sum(len(d.text) for d in docs)
