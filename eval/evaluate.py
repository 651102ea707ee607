"""Evaluate one model on a benchmark: generate completions, score them in the sandbox, write the report.

Used by the `eval` stage and by `lathe eval humaneval` for any HF directory or registered version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from lathe.core.models import resolve_model
from lathe.core.plots import pyplot
from lathe.eval.benchmarks import BENCHMARKS
from lathe.eval.config import EvalConfig
from lathe.eval.humaneval import score


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, a chart of sample statuses, and a markdown page that shows both."""
    plt = pyplot()
    statuses: dict[str, int] = {}
    for r in report["results"]:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(list(statuses), list(statuses.values()), color=["tab:green" if s == "passed" else "tab:red" for s in statuses])
    ax.set_ylabel("samples")
    ax.set_title("HumanEval samples by status")
    fig.tight_layout()
    chart = out_dir / "statuses.png"
    fig.savefig(chart, dpi=100)
    plt.close(fig)
    ks = {k: v for k, v in report.items() if k.startswith("pass@")}
    lines = ["# HumanEval report", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in ks.items()]
    lines += [f"| problems | {report['problems']} |", f"| samples | {report['samples']} |", f"| isolation | {report['isolation']} |", ""]
    gate = report.get("gate")
    if gate:
        lines += [f"**Gate: {'passed' if gate['passed'] else 'failed'}** ({gate['reason']})", ""]
    lines += ["![statuses](statuses.png)", ""]
    page = out_dir / "report.md"
    page.write_text("\n".join(lines))
    results = out_dir / "results.json"
    results.write_text(json.dumps(report, indent=2))
    return [results, page, chart]


def evaluate_model(model_ref: str, cfg: EvalConfig, out_dir: Path, benchmark: str = "humaneval") -> dict[str, Any]:
    """Generate and score one model on a benchmark; writes samples.jsonl, results.json, report.md."""
    from lathe.eval.generate import generate_samples  # torch: only when generating

    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model(model_ref, out_dir / "model")
    samples = generate_samples(model_dir, BENCHMARKS.get(benchmark).problems(), cfg.generation)
    (out_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    report = score(samples, cfg, benchmark=benchmark)
    write_report(report, out_dir)
    return report


def print_eval(report: dict[str, Any], console: Console) -> None:
    """pass@k and the gate's decision with its figures."""
    ks = ", ".join(f"{k} = {v:.4f}" for k, v in report.items() if k.startswith("pass@"))
    console.print(f"[bold]eval[/]: {ks} on {report['problems']} problems, {report['samples']} samples ({report['isolation']})")
    gate = report.get("gate")
    if gate:
        verdict = "[green]passed[/]: staff alias set" if gate["passed"] else "[red]failed[/]: nothing moves"
        console.print(f"gate {verdict} for version {gate['candidate_version']} ({gate['reason']}); "
                      f"candidate {gate['candidate']}, production v{gate['production_version']} {gate['production']}")
