"""The `eval` stage: generate HumanEval completions with the trained model, score them in the
sandbox, write the report, and run the promotion gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from rich.console import Console  # noqa: E402

from eval.gate import decide  # noqa: E402
from eval.generate import generate_samples  # noqa: E402
from eval.config import EvalConfig  # noqa: E402
from eval.humaneval import score  # noqa: E402
from pipelines.errors import InputError  # noqa: E402
from pipelines.stages import Stage, StageContext, StageResult, json_summary, register  # noqa: E402


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, a chart of sample statuses, and a markdown page that shows both."""
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


def resolve_model(ref: str, cache: Path) -> Path:
    """An HF model directory, or a registered version (`models:/name/3`, `models:/name@staff`) downloaded from MLflow."""
    if "://" in ref or ref.startswith("models:/"):
        import mlflow

        try:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(cache)))
        except Exception as exc:  # MLflow raises several types for a missing version or store
            raise InputError(f"cannot fetch model {ref} from MLflow ({str(exc).splitlines()[0]}); check the name, version or alias") from None
    path = Path(ref)
    if not (path / "config.json").is_file():
        raise InputError(f"{path} is not a Hugging Face model directory (no config.json)")
    return path


def evaluate_model(model_ref: str, cfg: EvalConfig, out_dir: Path, benchmark: str = "humaneval") -> dict[str, Any]:
    """Generate and score one model on a benchmark; writes samples.jsonl, results.json, report.md."""
    from eval.benchmarks import BENCHMARKS

    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model(model_ref, out_dir / "model")
    samples = generate_samples(model_dir, BENCHMARKS.get(benchmark).problems(), cfg.generation)
    (out_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    report = score(samples, cfg, benchmark=benchmark)
    write_report(report, out_dir)
    return report


def run_eval(ctx: StageContext) -> StageResult:
    """Generate, score, report, gate."""
    cfg = ctx.config.eval
    train_dir = ctx.inputs["train"]
    summary_file = train_dir / "train_summary.json"
    if not summary_file.is_file():
        raise InputError(f"{summary_file} not found; run `lathe run train` first")
    trained = json.loads(summary_file.read_text())
    report = evaluate_model(str(train_dir / "hf_model"), cfg, ctx.out_dir)
    figures = {k: v for k, v in report.items() if k.startswith("pass@")}
    if trained.get("final_val_loss") is not None:
        figures["val_loss"] = float(trained["final_val_loss"])
    name, version = trained.get("registered_model"), trained.get("model_version")
    if name and version:
        decision = decide(MlflowClient(), name, str(version), figures, cfg.gate)
        report["gate"] = {"passed": decision.passed, "reason": decision.reason, "candidate_version": version,
                          "production_version": decision.production_version, "candidate": decision.candidate,
                          "production": decision.production}
    artifacts = write_report(report, ctx.out_dir)
    print_eval(report, ctx.console)
    return StageResult(
        counts={"problems": report["problems"], "samples": report["samples"],
                "passed": sum(r["passed"] for r in report["results"])},
        metrics={k.replace("@", "_at_"): float(v) for k, v in figures.items()},  # MLflow keys allow no '@'
        artifacts=[ctx.out_dir / "samples.jsonl", *artifacts],
        details={"gate": report.get("gate")},
    )


def print_eval(report: dict[str, Any], console: Console) -> None:
    """pass@k and the gate's decision with its figures."""
    ks = ", ".join(f"{k} = {v:.4f}" for k, v in report.items() if k.startswith("pass@"))
    console.print(f"[bold]eval[/]: {ks} on {report['problems']} problems, {report['samples']} samples ({report['isolation']})")
    gate = report.get("gate")
    if gate:
        verdict = "[green]passed[/]: staff alias set" if gate["passed"] else "[red]failed[/]: nothing moves"
        console.print(f"gate {verdict} for version {gate['candidate_version']} ({gate['reason']}); "
                      f"candidate {gate['candidate']}, production v{gate['production_version']} {gate['production']}")


EVAL = register(
    Stage(
        name="eval",
        inputs=("train",),
        section=lambda cfg: cfg.eval,
        run=run_eval,
        version="1",
        summarize=json_summary("results.json", print_eval),
    )
)
