"""The CPU profile's table (configs/cpu.yaml, after `make all CONFIG=configs/cpu.yaml`), against its goals:

- train-stage wall time (goal: at most 30 minutes on the 2-core machine), tokens, tokens per second;
- bits per byte on held-out documents beside gzip -9 and xz -9e on the same bytes, overall and per language
  (goal: below gzip; stretch: below xz);
- single-line infilling in PSM and SPM beside the floors (goals: edit similarity above copying the line
  above, pass@1 above the empty middle, at least 90% of middles ended within the budget);
- line completion per language beside the previous-line floor;
- the served engine's completions of five fixed prompts, one at a cursor with code after it (goal: each
  parses as Python together with its prompt, and suffix).

    .venv/bin/python benchmarks/cpu_profile.py [--runs runs/cpu] [--out runs/bench/cpu_profile.json]

The figures are the eval stage's (runs/<profile>/eval/results.json); the completions come from
serving's engine in this process (the engine the Triton model runs), greedy.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit

# (prompt, suffix or None): the fixed prompts whose served completions must parse with them
PROMPTS: list[tuple[str, str | None]] = [
    ("def fibonacci(n):\n", None),
    ('def is_palindrome(text: str) -> bool:\n    """True when text reads the same backwards."""\n', None),
    ("import os\n\n\ndef python_files(root):\n    found = []\n", None),
    ("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n", None),
    ("def mean(values):\n    total = 0\n    for value in values:\n", "    return total / len(values)\n"),
]
# where a left-to-right completion of a function ends: the next top-level statement
STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\n\n\n", "\nprint("]
MAX_TOKENS = 96


def parses(code: str) -> bool:
    """Whether ``code`` is valid Python."""
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


def served_completions(model_dir: Path) -> list[dict[str, Any]]:
    """Each fixed prompt's greedy completion by the served engine, and whether it parses with its prompt (and suffix).

    A completion cut by the token budget is judged on its complete lines, as an editor shows a suggestion
    that ends mid-line only up to its last full line."""
    from lathe.serving.engine import Engine

    engine = Engine(model_dir)
    out = []
    for prompt, suffix in PROMPTS:
        params: dict[str, Any] = {"max_tokens": MAX_TOKENS, "stop": STOPS}
        if suffix is not None:
            params["suffix"] = suffix
        request = engine.parse(prompt, params)
        events = list(engine.generate([request]))
        text, finish = "".join(e.text for e in events), events[-1].finish
        shown = text if finish != "length" or "\n" not in text else text[: text.rindex("\n") + 1]
        out.append(
            {
                "prompt": prompt,
                "suffix": suffix,
                "completion": text,
                "finish": finish,
                "parses": parses(prompt + shown + (suffix or "")),
            }
        )
    return out


def profile_table(runs: Path) -> dict[str, Any]:
    """The eval stage's figures and the train stage's time and tokens for the profile in ``runs``."""
    train = json.loads((runs / "train" / "manifest.json").read_text())
    results = json.loads((runs / "eval" / "results.json").read_text())
    bpb, infilling, lines = results["bits_per_byte"], results["infilling"], results.get("line_completion") or {}
    table: dict[str, Any] = {
        "train_wall_s": train["duration_s"],
        "tokens": train["counts"]["tokens"],
        "parameters": train["counts"]["parameters"],
        "tokens_per_s": train["metrics"].get("tokens_per_s"),
        "final_val_loss": train["metrics"].get("final_val_loss"),
        "bits_per_byte": {k: bpb[k] for k in ("model", "gzip-9", "xz-9e", "documents", "bytes")},
        "bits_per_byte_by_language": {
            lang: {k: f[k] for k in ("model", "gzip-9", "xz-9e", "documents")} for lang, f in bpb.get("languages", {}).items()
        },
        "infilling_tasks": infilling["tasks"],
        "infilling": {
            label: {k: f[k] for k in ("pass@1", "exact_match", "edit_similarity", "ended", "end_probability") if k in f}
            for label, f in [*infilling["modes"].items(), *((f"floor {n}", f) for n, f in infilling["floors"].items())]
        },
    }
    if lines:
        table["line_completion"] = {
            "all": {k: lines[k] for k in ("tasks", "exact_match", "edit_similarity")},
            **lines["languages"],
        }
        table["line_completion_floor"] = {"all": {k: lines["floor"][k] for k in ("tasks", "edit_similarity")}}
    return table


def goals(table: dict[str, Any], prompts: list[dict[str, Any]]) -> dict[str, bool]:
    """Each goal of the CPU profile, met or not."""
    bpb, infilling = table["bits_per_byte"], table["infilling"]
    modes = [m for m in infilling if not m.startswith("floor")]
    floor_es = infilling["floor previous-line"]["edit_similarity"]
    floor_pass = infilling["floor empty"]["pass@1"]
    return {
        "train at most 30 minutes": table["train_wall_s"] <= 1800,
        "bits per byte below gzip -9": bpb["model"] < bpb["gzip-9"],
        "bits per byte below xz -9e (stretch)": bpb["model"] < bpb["xz-9e"],
        **{
            f"infilling {m}: edit similarity above copying the line above": infilling[m]["edit_similarity"] > floor_es
            for m in modes
        },
        **{f"infilling {m}: pass@1 above the empty middle": infilling[m]["pass@1"] > floor_pass for m in modes},
        **{f"infilling {m}: at least 90% of middles ended": infilling[m]["ended"] >= 0.9 for m in modes},
        "the five fixed prompts' completions parse": all(p["parses"] for p in prompts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/cpu"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench/cpu_profile.json"))
    args = parser.parse_args()
    table = profile_table(args.runs)
    prompts = served_completions(args.runs / "train" / "hf_model")
    emit({**table, "prompts": prompts, "goals": goals(table, prompts)}, args.out)


if __name__ == "__main__":
    main()
