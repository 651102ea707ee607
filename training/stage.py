"""The `train` stage: launch Composer (in process or across processes), export, register; with
``sweep.enabled``, the sweep's candidates instead. Wiring only: the work is in :mod:`lathe.training.pretrain`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lathe.core.models import verify_registered
from lathe.core.stage import Stage, StageContext, StageResult, json_summary
from lathe.training.job import METRICS, MODEL_DIR, SPIKES, SUMMARY
from lathe.training.launcher import launch
from lathe.training.mixture import print_mixture
from lathe.training.pretrain import (
    TrainSections,
    build_job,
    multi_node,
    print_train,
    registered_summary,
    run_name,
    train_headline,
    train_result,
)
from lathe.training.sweep.config import Score, SweptTrain
from lathe.training.sweep.executor import run_sweep


def run_train(ctx: StageContext[TrainSections]) -> StageResult:
    """Train from the shards, export a HF checkpoint and register it in MLflow (node 0 of a multi-node job)."""
    import mlflow

    from lathe.training.trainer import preflight, run_training  # torch and Composer: only when training

    cfg = ctx.config
    run = mlflow.active_run()
    job, draws = build_job(
        cfg,
        ctx.inputs,
        ctx.out_dir,
        run_name(cfg, ctx.fingerprint),
        ctx.console,
        mlflow.get_tracking_uri(),
        run.info.run_id if run else None,
    )
    print_mixture(draws, cfg.shards.seq_len, ctx.console)
    preflight(job)  # bad input fails here, before a process or a batch is spent
    nproc = cfg.train.nproc
    ctx.console.print(f"training {job.run_name}: {nproc} process(es), max_duration {cfg.train.max_duration}")
    if nproc == 1 and not multi_node(nproc):
        run_training(job)
    else:
        launch(job, nproc, ctx.out_dir)
    summary_file, hf_dir, metrics_file = (Path(ctx.outputs[k]) for k in ("summary", "model", "metrics"))
    summary = json.loads(summary_file.read_text())
    run_id = run.info.run_id if run else None
    summary = registered_summary(cfg, ctx.fingerprint, ctx.inputs["shards"], job, draws, summary, hf_dir, metrics_file, run_id)
    summary["wandb_runs"] = sorted(str(p) for p in (ctx.out_dir / "wandb").glob("*run-*"))
    summary_file.write_text(json.dumps(summary, indent=2))
    print_train(summary, ctx.console)
    artifacts = [p for p in (metrics_file, ctx.out_dir / SPIKES, summary_file) if p.is_file()]
    return train_result(summary, artifacts)


def train_section(cfg: Any) -> Any:
    """What the train stage is fingerprinted and tracked by: the train section, and with a sweep on, the
    sweep and (when it runs HumanEval on the candidates) the eval section too."""
    if not cfg.sweep.enabled:
        return cfg.train
    return SweptTrain(
        train=cfg.train, sweep=cfg.sweep, evaluation=cfg.eval.model_dump(mode="json") if cfg.sweep.evaluate else None
    )


def train_stage(score: Score | None = None) -> Stage[Any]:
    """The train stage; with ``sweep.enabled`` it trains the sweep's candidates and keeps the best by
    ``sweep.metric`` (``score``: the HumanEval figures of a candidate, which the roof supplies)."""

    def run(ctx: StageContext[TrainSections]) -> StageResult:
        if ctx.config.sweep.enabled:
            return run_sweep(ctx, score)
        return run_train(ctx)

    return Stage(
        name="train",
        inputs=("tokenizer", "shards"),
        section=train_section,
        run=run,
        outputs={"model": MODEL_DIR, "summary": SUMMARY, "metrics": METRICS},
        summarize=json_summary(SUMMARY, print_train),
        headline=train_headline,
        verify=verify_registered,
        resumable=True,
    )


TRAIN = train_stage()
