"""The `train` stage: launch Composer (in process or across processes), export, register."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from lathe.core.models import ModelRegistry
from lathe.core.stage import Stage, StageContext, StageResult, json_summary
from lathe.tokenizer.config import ShardsConfig
from lathe.training.config import TrainConfig
from lathe.training.job import METRICS, MODEL_DIR, SPIKES, SUMMARY, TrainJob
from lathe.training.launcher import launch


class TrainSections(Protocol):
    """The config sections the train stage reads."""

    profile: str
    train: TrainConfig
    shards: ShardsConfig


def _last(metrics_file: Path, key: str) -> float | None:
    value = None
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            row = json.loads(line)
            if key in row:
                value = row[key]
    return value


def run_train(ctx: StageContext[TrainSections]) -> StageResult:
    """Train from the shards, export a HF checkpoint and register it in MLflow."""
    import mlflow

    from lathe.training.trainer import preflight, run_training  # torch and Composer: only when training

    cfg = ctx.config
    run = mlflow.active_run()
    job = TrainJob(
        train=cfg.train,
        seq_len=cfg.shards.seq_len,
        shards=ctx.inputs["shards"].uri("mds"),
        tokenizer=str(ctx.inputs["tokenizer"].path("tokenizer")),
        out_dir=str(ctx.out_dir.resolve()),
        run_name=f"{cfg.profile}-train-{ctx.fingerprint}",
        mlflow_uri=mlflow.get_tracking_uri(),
        mlflow_run_id=run.info.run_id if run else None,
    )
    preflight(job)  # bad input fails here, before a process or a batch is spent
    nproc = cfg.train.nproc
    ctx.console.print(f"training {job.run_name}: {nproc} process(es), max_duration {cfg.train.max_duration}")
    if nproc == 1:
        run_training(job)
    else:
        launch(job, nproc, ctx.out_dir)
    summary_file, hf_dir, metrics_file = (Path(ctx.outputs[k]) for k in ("summary", "model", "metrics"))
    summary = json.loads(summary_file.read_text())
    version = None
    if run is not None:
        version = ModelRegistry(cfg.train.registered_model).register(
            hf_dir, run.info.run_id, {"lathe.profile": cfg.profile, "lathe.fingerprint": ctx.fingerprint}
        )
    summary.update(
        registered_model=cfg.train.registered_model,
        model_version=version,
        tokens_per_s=_last(metrics_file, "throughput/tokens_per_sec"),
        mfu=_last(metrics_file, "throughput/device/mfu"),
        wandb_runs=sorted(str(p) for p in (ctx.out_dir / "wandb").glob("*run-*")),
    )
    summary_file.write_text(json.dumps(summary, indent=2))
    print_train(summary, ctx.console)
    artifacts = [p for p in (metrics_file, ctx.out_dir / SPIKES, summary_file) if p.is_file()]
    return StageResult(
        counts={"batches": summary["batches"], "tokens": summary["tokens"], "parameters": summary["parameters"]},
        metrics={k: float(summary[k]) for k in ("initial_val_loss", "final_val_loss", "tokens_per_s") if summary.get(k) is not None},
        artifacts=artifacts,
        details=summary,
    )


def print_train(summary: dict[str, Any], console: Console) -> None:
    """The training summary on one screen."""
    initial, final = summary.get("initial_val_loss"), summary.get("final_val_loss")
    console.print(
        f"[bold]train[/]: {summary['parameters'] / 1e6:.2f}M parameters, {summary['batches']} batches, "
        f"{summary['tokens']:,} tokens on {summary['world_size']} rank(s)"
        + (f", resumed at batch {summary['resumed_at_batch']}" if summary.get("resumed_at_batch") else "")
    )
    if final is not None:
        start = f"{initial:.3f} -> " if initial is not None else ""
        console.print(f"validation loss {start}{final:.3f} (perplexity {summary['final_val_perplexity']:.1f})")
    if summary.get("tokens_per_s"):
        console.print(f"throughput {summary['tokens_per_s']:,.0f} tokens/s; loss spikes: {summary['loss_spikes']}")
    if summary.get("model_version"):
        console.print(f"registered {summary['registered_model']} version {summary['model_version']} in MLflow")
    for path in summary.get("wandb_runs", [])[-1:]:  # the latest attempt's run
        console.print(f"W&B offline run: {path} (upload with `wandb sync {path}`)")


def train_headline(manifest: dict[str, Any]) -> str:
    """Model size, tokens trained and the validation loss before and after."""
    counts, m = manifest["counts"], manifest["metrics"]
    start = f"{m['initial_val_loss']:.2f} -> " if "initial_val_loss" in m else ""  # a resumed run has no baseline
    return f"{counts['parameters'] / 1e6:.1f}M params, {counts['tokens']:,} tokens, val loss {start}{m['final_val_loss']:.2f}"


TRAIN: Stage[Any] = Stage(
    name="train",
    inputs=("tokenizer", "shards"),
    section=lambda cfg: cfg.train,
    run=run_train,
    outputs={"model": MODEL_DIR, "summary": SUMMARY, "metrics": METRICS},
    summarize=json_summary(SUMMARY, print_train),
    headline=train_headline,
    resumable=True,
)
