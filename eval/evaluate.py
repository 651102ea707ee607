"""Evaluate one model on its benchmarks: generate completions, score them in the sandbox, write the report.

Used by the `eval` stage and by `lathe eval humaneval` for any HF directory or registered version.
With several benchmarks (``eval.benchmarks``: HumanEval and its translations), each is scored
alone; the first is the headline (its pass@k and results stay at the top of results.json) and
every one is reported per language in ``benchmarks``.
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
from lathe.eval.quality import print_quality, quality_markdown
from lathe.eval.sandbox import toolchains_dir

PER_BENCHMARK = (
    "pass@",
    "problems",
    "samples",
    "median_sample_s",
    "skipped",
    "statuses",
)  # what results.json keeps of each benchmark


def benchmark_figures(report: dict[str, Any]) -> dict[str, float]:
    """pass@k of every benchmark but the headline, as ``<benchmark>/pass@k`` (the gate's and MLflow's names)."""
    return {
        f"{name}/{k}": v
        for name, b in list(report.get("benchmarks", {}).items())[1:]
        for k, v in b.items()
        if k.startswith("pass@")
    }


def report_figures(report: dict[str, Any]) -> dict[str, float]:
    """Every pass@k of a report: the headline's as ``pass@k``, the others' as ``<benchmark>/pass@k``."""
    return {k: v for k, v in report.items() if k.startswith("pass@")} | benchmark_figures(report)


def samples_file(out_dir: Path, benchmark: str, first: bool) -> Path:
    """samples.jsonl for the headline benchmark, samples-<benchmark>.jsonl for each other."""
    return out_dir / ("samples.jsonl" if first else f"samples-{benchmark}.jsonl")


def _statuses(results: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts


def _charts(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Sample statuses of the headline benchmark, and pass@1 per benchmark (language) when there are several."""
    plt = pyplot()
    statuses = _statuses(report["results"])
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(list(statuses), list(statuses.values()), color=["tab:green" if s == "passed" else "tab:red" for s in statuses])
    ax.set_ylabel("samples")
    ax.set_title(f"{report['benchmark']} samples by status")
    fig.tight_layout()
    charts = [out_dir / "statuses.png"]
    fig.savefig(charts[0], dpi=100)
    plt.close(fig)
    scored = {name: b for name, b in report.get("benchmarks", {}).items() if "pass@1" in b}
    if len(report.get("benchmarks", {})) > 1:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(list(scored), [b["pass@1"] for b in scored.values()], color="tab:blue")
        ax.set_ylabel("pass@1")
        ax.set_ylim(0, 1)
        ax.set_title("pass@1 per language")
        ax.tick_params(axis="x", labelrotation=30)
        fig.tight_layout()
        charts.append(out_dir / "languages.png")
        fig.savefig(charts[1], dpi=100)
        plt.close(fig)
    return charts


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, charts (statuses; pass@1 per language), and a markdown page that shows them."""
    charts = _charts(report, out_dir)
    ks = {k: v for k, v in report.items() if k.startswith("pass@")}
    lines = [f"# HumanEval report ({report['benchmark']})", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in ks.items()]
    lines += [
        f"| problems | {report['problems']} |",
        f"| samples | {report['samples']} |",
        f"| isolation | {report['isolation']} |",
        "",
    ]
    benchmarks = report.get("benchmarks", {})
    if len(benchmarks) > 1:
        names = sorted({k for b in benchmarks.values() for k in b if k.startswith("pass@")})
        lines += [
            "## Per language",
            "",
            "| benchmark | " + " | ".join(names) + " | problems | samples | note |",
            "|---|" + "---|" * (len(names) + 3),
        ]
        for name, b in benchmarks.items():
            figures = " | ".join(f"{b[k]:.4f}" if k in b else "-" for k in names)
            lines.append(f"| {name} | {figures} | {b.get('problems', 0)} | {b.get('samples', 0)} | {b.get('skipped', '')} |")
        lines += ["", "![per language](languages.png)", ""]
    lines += quality_markdown(report)
    gate = report.get("gate")
    if gate:
        lines += [f"**Gate: {'passed' if gate['passed'] else 'failed'}** ({gate['reason']})", ""]
    lines += ["![statuses](statuses.png)", ""]
    page = out_dir / "report.md"
    page.write_text("\n".join(lines))
    results = out_dir / "results.json"
    results.write_text(json.dumps(report, indent=2))
    return [results, page, *charts]


def evaluate_model(model_ref: str, cfg: EvalConfig, out_dir: Path, benchmarks: list[str] | None = None) -> dict[str, Any]:
    """Generate and score one model on each benchmark (default ``cfg.benchmarks``); writes the samples
    files, results.json and report.md. A benchmark whose toolchain is missing is skipped, with the
    reason, not failed; the headline benchmark must run."""
    from lathe.eval.generate import generate_samples  # torch: only when generating

    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model(model_ref, out_dir / "model")
    names = benchmarks or cfg.benchmarks
    report: dict[str, Any] = {}
    per_benchmark: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        bench = BENCHMARKS.get(name)
        missing = (
            bench.language.missing(toolchains_dir(cfg.sandbox)) if i else None
        )  # the headline's scoring raises the toolchain's error itself
        if missing:
            per_benchmark[name] = {"skipped": missing}
            continue
        samples = generate_samples(model_dir, bench.problems(), cfg.generation, language=bench.language)
        samples_file(out_dir, name, i == 0).write_text("".join(json.dumps(s) + "\n" for s in samples))
        scored = score(samples, cfg, benchmark=name)
        per_benchmark[name] = {k: v for k, v in scored.items() if k.startswith(PER_BENCHMARK)} | {
            "statuses": _statuses(scored["results"])
        }
        if i == 0:
            report = scored
        else:
            per_benchmark[name]["results"] = scored["results"]
    report["benchmarks"] = per_benchmark
    write_report(report, out_dir)
    return report


def print_eval(report: dict[str, Any], console: Console) -> None:
    """pass@k (per language when there are several) and the gate's decision with its figures."""
    ks = ", ".join(f"{k} = {v:.4f}" for k, v in report.items() if k.startswith("pass@"))
    console.print(f"[bold]eval[/]: {ks} on {report['problems']} problems, {report['samples']} samples ({report['isolation']})")
    for name, b in list(report.get("benchmarks", {}).items())[1:]:
        figures = ", ".join(f"{k} = {v:.4f}" for k, v in b.items() if k.startswith("pass@")) or f"skipped: {b.get('skipped')}"
        console.print(f"  {name}: {figures}")
    print_quality(report, console)
    gate = report.get("gate")
    if gate:
        verdict = "[green]passed[/]: staff alias set" if gate["passed"] else "[red]failed[/]: nothing moves"
        console.print(
            f"gate {verdict} for version {gate['candidate_version']} ({gate['reason']}); "
            f"candidate {gate['candidate']}, production v{gate['production_version']} {gate['production']}"
        )
