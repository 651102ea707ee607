"""A training job: everything a rank needs, serialisable to JSON for the ranks lathe's launcher starts, and
the files a run writes. Light on purpose (pydantic only): the stage and the launcher import it
without importing torch or Composer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from lathe.core.config import Strict
from lathe.training.config import FinetuneConfig, TrainConfig
from lathe.training.mixture import StreamDraw

# What a run writes into its out_dir (the train stage declares them as its outputs).
MODEL_DIR, SUMMARY, METRICS, SPIKES = "hf_model", "train_summary.json", "metrics.jsonl", "loss_spikes.jsonl"


class Teacher(Strict):
    """A distillation run's teacher and the weights of its loss (the `distill` section's)."""

    path: str = Field(description="Local HF directory of the teacher (distill.teacher, resolved).")
    ref: str = Field(description="distill.teacher as configured.")
    version: str = Field("", description="The registered version the teacher is (empty: a directory).")
    temperature: float = Field(gt=0)
    kl_weight: float = Field(ge=0)
    ce_weight: float = Field(ge=0)


class TrainJob(Strict):
    """Everything a rank needs, serialisable to JSON for the launcher."""

    train: TrainConfig = Field(description="The `train` section of the run's config.")
    seq_len: int = Field(gt=0, description="Tokens per sample in the shards (shards.seq_len).")
    streams: list[StreamDraw] = Field(description="The training mixture: each stream's root (train/, val/) and draw per epoch.")
    validation: dict[str, list[str]] = Field(
        description="Evaluator label -> the stream roots whose val splits it reads (`val`: the new data; `replay_val`: earlier data)."
    )
    tokenizer: str = Field(description="Directory of the trained tokenizer.")
    out_dir: str = Field(description="The stage's output directory.")
    run_name: str = Field(description="Stable across restarts: autoresume finds checkpoints by it.")
    mlflow_uri: str
    mlflow_run_id: str | None = None
    init_weights: str | None = Field(
        None, description="Local HF directory or Composer checkpoint to start from (train.init_from, resolved)."
    )
    init_ref: str | None = Field(None, description="train.init_from as configured (for the summary and lineage).")
    parent_version: str = Field("", description="The registered version the initial weights are (empty: none).")
    trial: bool = Field(
        False,
        description="A sweep's profiling trial: train max_duration batches and log the throughput; "
        "no evaluation, checkpoint or export.",
    )
    device_memory_mb: int | None = Field(
        None,
        gt=0,
        description="Cap each rank's memory at this (sweep.device_memory_mb): "
        "a trial that needs more runs out of memory, as on a smaller device.",
    )
    teacher: Teacher | None = Field(
        None, description="Distil from this teacher's logits (the `distill` stage); None: pretraining."
    )


# What a post-training run writes beside MODEL_DIR, SUMMARY and METRICS: the LoRA adapter on its own.
ADAPTER_DIR = "adapter"


class FinetuneJob(Strict):
    """A post-training run (SFT or DPO) every rank executes, serialisable to JSON for the launcher."""

    method: Literal["sft", "dpo"] = Field(description="Supervised fine-tuning or Direct Preference Optimization.")
    tune: FinetuneConfig = Field(description="The `sft` or `dpo` section of the run's config.")
    beta: float = Field(0.1, gt=0, description="DPO's beta (dpo.beta).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="DPO's label smoothing (dpo.label_smoothing).")
    sft_weight: float = Field(
        0.0, ge=0, description="Weight of the chosen answers' cross-entropy in DPO's loss (dpo.sft_weight)."
    )
    base: str = Field(description="Local HF directory of the model to tune (init_from, resolved); its tokenizer is beside it.")
    base_ref: str = Field(description="init_from as configured (for the summary and lineage).")
    parent_version: str = Field("", description="The registered version the base is (empty: a directory).")
    data: str = Field(description="MDS root holding the encoded examples' train/ and val/ splits.")
    seq_len: int = Field(gt=0, description="Longest example in tokens (for FLOPs per token).")
    out_dir: str = Field(description="The stage's output directory.")
    run_name: str = Field(description="Stable across restarts: autoresume finds checkpoints by it.")
    mlflow_uri: str = ""
    mlflow_run_id: str | None = None


def job_folder(job: TrainJob | FinetuneJob) -> str:
    """Where a job's checkpoints go: its section's save_folder or <stage>/checkpoints."""
    section = job.train if isinstance(job, TrainJob) else job.tune
    return section.save_folder or str(Path(job.out_dir) / "checkpoints")


def last_metric(metrics_file: Path, key: str) -> float | None:
    """The last value ``key`` took in a run's metrics.jsonl (None: never logged)."""
    value = None
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            row = json.loads(line)
            if key in row:
                value = row[key]
    return value
