"""The `train` stage: launch Composer (in process or across processes), export, register."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from rich.console import Console

from pipelines.errors import LatheError
from pipelines.stages import Stage, StageContext, StageResult, json_summary, register
from training.trainer import TrainJob, preflight, run_training


def launch(job: TrainJob, nproc: int, out: Path) -> None:
    """Run the job on ``nproc`` local ranks with Composer's launcher (DDP: gloo on CPU, NCCL on GPU).

    Multi-node: NODE_RANK, WORLD_SIZE (total ranks), MASTER_ADDR and MASTER_PORT in the
    environment are passed on, as a Kubernetes Indexed Job sets them.
    """
    job_file = out / "job.json"
    job_file.write_text(job.model_dump_json(indent=2))
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    composer = shutil.which("composer", path=str(Path(sys.executable).parent)) or "composer"
    cmd = [composer, "-n", str(nproc), "--stdout", str(logs / "rank{rank}.stdout.txt"),
           "--stderr", str(logs / "rank{rank}.stderr.txt")]
    for var, flag in [("WORLD_SIZE", "--world_size"), ("NODE_RANK", "--node_rank"),
                      ("MASTER_ADDR", "--master_addr"), ("MASTER_PORT", "--master_port")]:
        if os.environ.get(var):
            cmd += [flag, os.environ[var]]
    cmd += ["-m", "training.worker", str(job_file)]
    env = dict(os.environ)
    # ranks x threads <= cores, or the ranks fight over them
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise LatheError(f"training failed (exit {proc.returncode}); rank logs in {logs}")


def register_model(name: str, hf_dir: Path, run_id: str, tags: dict[str, str]) -> str:
    """Log the HF directory to the stage's run and register it as a new model version."""
    mlflow.log_artifacts(str(hf_dir), artifact_path="hf_model")
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description="lathe code-completion model (HF Llama checkpoint)")
    source = f"{mlflow.get_run(run_id).info.artifact_uri}/hf_model"
    version = client.create_model_version(name, source=source, run_id=run_id, tags=tags)
    return str(version.version)


def _last(metrics_file: Path, key: str) -> float | None:
    value = None
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            row = json.loads(line)
            if key in row:
                value = row[key]
    return value


def run_train(ctx: StageContext) -> StageResult:
    """Train from the shards, export a HF checkpoint and register it in MLflow."""
    cfg = ctx.config
    shards = cfg.shards.output or str(ctx.inputs["shards"] / "mds")
    run = mlflow.active_run()
    job = TrainJob(
        config=cfg.model_dump(mode="json"),
        shards=shards,
        tokenizer=str(ctx.inputs["tokenizer"]),
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
    summary = json.loads((ctx.out_dir / "train_summary.json").read_text())
    hf_dir = ctx.out_dir / "hf_model"
    version = None
    if run is not None:
        version = register_model(
            cfg.train.registered_model, hf_dir, run.info.run_id, {"lathe.profile": cfg.profile, "lathe.fingerprint": ctx.fingerprint}
        )
    metrics_file = ctx.out_dir / "metrics.jsonl"
    summary.update(
        registered_model=cfg.train.registered_model,
        model_version=version,
        tokens_per_s=_last(metrics_file, "throughput/tokens_per_sec"),
        mfu=_last(metrics_file, "throughput/device/mfu"),
        wandb_runs=sorted(str(p) for p in (ctx.out_dir / "wandb").glob("*run-*")),
    )
    (ctx.out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    print_train(summary, ctx.console)
    artifacts = [p for p in (metrics_file, ctx.out_dir / "loss_spikes.jsonl", ctx.out_dir / "train_summary.json") if p.is_file()]
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


TRAIN = register(
    Stage(
        name="train",
        inputs=("tokenizer", "shards"),
        section=lambda cfg: cfg.train,
        run=run_train,
        version="1",
        summarize=json_summary("train_summary.json", print_train),
        resumable=True,
    )
)
