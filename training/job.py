"""A training job: everything a rank needs, serialisable to JSON for Composer's launcher, and
the files a run writes. Light on purpose (pydantic only): the stage and the launcher import it
without importing torch or Composer."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from lathe.core.config import Strict
from lathe.training.config import TrainConfig
from lathe.training.mixture import StreamDraw

# What a run writes into its out_dir (the train stage declares them as its outputs).
MODEL_DIR, SUMMARY, METRICS, SPIKES = "hf_model", "train_summary.json", "metrics.jsonl", "loss_spikes.jsonl"


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
    init_weights: str | None = Field(None, description="Local HF directory or Composer checkpoint to start from (train.init_from, resolved).")
    init_ref: str | None = Field(None, description="train.init_from as configured (for the summary and lineage).")
    parent_version: str = Field("", description="The registered version the initial weights are (empty: none).")


def save_folder(job: TrainJob) -> str:
    """Where checkpoints go: the configured URI or <stage>/checkpoints."""
    return job.train.save_folder or str(Path(job.out_dir) / "checkpoints")
