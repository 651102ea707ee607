"""`lathe eval`: score completions in the sandbox, or generate and score with any model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from lathe.pipelines.cli.app import OptionalConfigOpt, SetOpt, console, eval_app, load

BenchmarkOpt = typer.Option("humaneval", "--benchmark", help="humaneval (Python) or humaneval-js (Node.js).")


@eval_app.command("score")
def eval_score(
    samples: Path = typer.Option(..., "--samples", help="JSONL: task_id, completion per line (human-eval format)."),
    output: Path = typer.Option(..., "--output", help="Results JSON: pass@k and per-sample results in input order."),
    config: Optional[Path] = OptionalConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    allow_weak_isolation: bool = typer.Option(
        False, "--allow-weak-isolation", help="Run with rlimits only where namespaces cannot be created (unsafe)."
    ),
    benchmark: str = BenchmarkOpt,
) -> None:
    """Score completions: each runs in its own sandbox; prints pass@k."""
    from lathe.eval.humaneval import read_samples, score

    extra = ["eval.sandbox.allow_weak_isolation=true"] if allow_weak_isolation else []
    cfg = load(config, [*(set_ or []), *extra])
    report = score(read_samples(samples, benchmark), cfg.eval, benchmark=benchmark)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    ks = ", ".join(f"{k} = {v:.4f}" for k, v in report.items() if k.startswith("pass@"))
    console.print(f"{ks} over {report['problems']} problems, {report['samples']} samples ({report['isolation']}) -> {output}")


@eval_app.command("humaneval")
def eval_humaneval(
    model: str = typer.Option(..., "--model", help="HF model directory, or models:/NAME/VERSION, models:/NAME@ALIAS."),
    output: Path = typer.Option(..., "--output", help="Directory for samples.jsonl, results.json, report.md."),
    config: Optional[Path] = OptionalConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    benchmark: str = BenchmarkOpt,
) -> None:
    """Generate completions with a model and score them in the sandbox (no gate)."""
    from lathe.eval.evaluate import evaluate_model, print_eval

    print_eval(evaluate_model(model, load(config, set_).eval, output, benchmark), console)
