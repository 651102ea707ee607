"""The `distill` stage: a smaller student trained on the shards from a registered teacher's logits.

It is the train stage's run (the same job, mixture, trainer, checkpoints and export) with the
`distill` section as the train section and a teacher: every rank loads the teacher beside the student
and the loss adds the temperature-softened KL to its logits (:mod:`lathe.training.distill.loss`). The
student is registered with ``lathe.method=distill`` and ``lathe.parent_version`` = the teacher's
version, and goes through the gate (`distill_eval`), whose pass gives it the ``<track>-distill``
alias that `package` serves beside the model (``serve.student``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from lathe.core.errors import InputError
from lathe.core.models import current_version, model_to_tune, pinned, verify_registered
from lathe.core.stage import Stage, StageContext, StageResult, json_summary
from lathe.tokenizer.config import ShardsConfig, TokenizerConfig
from lathe.tokenizer.vocab import vocabulary_hash
from lathe.training.config import DistillConfig, TrainConfig
from lathe.training.job import METRICS, MODEL_DIR, SPIKES, SUMMARY, Teacher
from lathe.training.launcher import launch
from lathe.training.pretrain import build_job, print_train, registered_summary, train_headline, train_result
from lathe.training.sweep.config import SweepConfig

# The distill section's own settings; the rest of it is a train section (the student's).
DISTILL_ONLY = {"teacher", "temperature", "kl_weight", "ce_weight"}


class DistillSections(Protocol):
    """The config sections the distill stage reads."""

    profile: str
    distill: DistillConfig
    tokenizer: TokenizerConfig
    shards: ShardsConfig
    sweep: SweepConfig


@dataclass
class StudentSections:
    """The train stage's view of the config, with the student's section as ``train``."""

    profile: str
    train: TrainConfig
    tokenizer: TokenizerConfig
    shards: ShardsConfig
    sweep: SweepConfig


def student_sections(cfg: DistillSections) -> StudentSections:
    """The run's config as the train stage reads it, training the student."""
    train = TrainConfig.model_validate(cfg.distill.model_dump(exclude=DISTILL_ONLY))
    return StudentSections(cfg.profile, train, cfg.tokenizer, cfg.shards, cfg.sweep)


def run_distill(ctx: StageContext[DistillSections]) -> StageResult:
    """Resolve the teacher, train the student against it, export and register the student."""
    import mlflow

    from lathe.training.trainer import preflight, run_training

    dc = ctx.config.distill
    teacher = model_to_tune(pinned(dc.teacher, ctx.observed.get("teacher", "")), ctx.out_dir / "teacher", "distill.teacher")
    vocabulary = vocabulary_hash(ctx.inputs["tokenizer"].path("tokenizer"))
    if (theirs := vocabulary_hash(teacher.path)) != vocabulary:
        raise InputError(
            f"distill.teacher {teacher.ref} has vocabulary {theirs} but the shards use {vocabulary}: a teacher's "
            "logits must be over the student's tokens; point distill.teacher at a model of this vocabulary"
        )
    cfg = student_sections(ctx.config)
    run = mlflow.active_run()
    job, draws = build_job(
        cfg,
        ctx.inputs,
        ctx.out_dir,
        f"{cfg.profile}-distill-{ctx.fingerprint}",
        ctx.console,
        mlflow.get_tracking_uri(),
        run.info.run_id if run else None,
    )
    job = job.model_copy(
        update={
            "teacher": Teacher(
                path=str(teacher.path.resolve()),
                ref=teacher.ref,
                version=teacher.version,
                temperature=dc.temperature,
                kl_weight=dc.kl_weight,
                ce_weight=dc.ce_weight,
            )
        }
    )
    preflight(job)
    ctx.console.print(
        f"distilling {teacher.ref}"
        + (f" (version {teacher.version})" if teacher.version else "")
        + f" into a {dc.model.n_layers} x {dc.model.d_model} student: {dc.nproc} process(es), {dc.max_duration}"
    )
    if dc.nproc == 1:
        run_training(job)
    else:
        launch(job, dc.nproc, ctx.out_dir)
    summary_file, hf_dir, metrics_file = (Path(ctx.outputs[k]) for k in ("summary", "model", "metrics"))
    summary = registered_summary(
        cfg,
        ctx.fingerprint,
        ctx.inputs["shards"],
        job,
        draws,
        json.loads(summary_file.read_text()),
        hf_dir,
        metrics_file,
        run.info.run_id if run else None,
        tags={"lathe.method": "distill", "lathe.parent_version": teacher.version, "lathe.student_init": job.parent_version},
    )
    summary_file.write_text(json.dumps(summary, indent=2))
    print_distilled(summary, ctx.console)
    result = train_result(summary, [p for p in (metrics_file, ctx.out_dir / SPIKES, summary_file) if p.is_file()])
    result.metrics.update({k: float(summary[k]) for k in ("initial_val_kl", "final_val_kl") if summary.get(k) is not None})
    return result


def print_distilled(summary: dict[str, Any], console: Console) -> None:
    """The student's training summary and how close it came to the teacher."""
    print_train(summary, console)
    if summary.get("final_val_kl") is not None:
        before = summary.get("initial_val_kl")
        console.print(
            f"KL to the teacher ({summary['teacher']}) per validation token: "
            f"{'' if before is None else f'{before:.3f} -> '}{summary['final_val_kl']:.3f}"
        )


def distill_headline(manifest: dict[str, Any]) -> str:
    """The train headline and the KL to the teacher."""
    m = manifest["metrics"]
    kl = f"; KL to teacher {m['initial_val_kl']:.2f} -> {m['final_val_kl']:.2f}" if "initial_val_kl" in m else ""
    return train_headline(manifest) + kl


DISTILL: Stage[Any] = Stage(
    name="distill",
    inputs=("tokenizer", "shards"),
    section=lambda cfg: cfg.distill,
    run=run_distill,
    outputs={"model": MODEL_DIR, "summary": SUMMARY, "metrics": METRICS},
    summarize=json_summary(SUMMARY, print_distilled),
    headline=distill_headline,
    observe=lambda cfg: {"teacher": current_version(cfg.distill.teacher)},
    verify=verify_registered,
    resumable=True,
    optional=True,
)
