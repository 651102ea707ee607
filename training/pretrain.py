"""Pretraining as a library: the job every rank runs (weights to start from, the mixture), the registered
summary of a finished run and how it is shown. The train stage (:mod:`lathe.training.stage`) and the sweep's
executor (:mod:`lathe.training.sweep.executor`) both build on it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from lathe.core.errors import InputError
from lathe.core.models import ModelRegistry, ModelSource, resolve_source
from lathe.core.stage import StageResult, Upstream
from lathe.tokenizer.config import ShardsConfig, TokenizerConfig
from lathe.tokenizer.streams import StreamInfo
from lathe.tokenizer.vocab import vocabulary_hash
from lathe.training.config import TrainConfig
from lathe.training.job import TrainJob, last_metric
from lathe.training.launcher import launch
from lathe.training.mixture import StreamDraw, plan_mixture, run_samples, validation_roles
from lathe.training.sweep.config import SweepConfig


class TrainSections(Protocol):
    """The config sections the train stage reads."""

    profile: str
    train: TrainConfig
    tokenizer: TokenizerConfig
    shards: ShardsConfig
    sweep: SweepConfig


def initial_weights(cfg: TrainSections, cache: Path, vocabulary: str, console: Console) -> ModelSource | None:
    """Resolve train.init_from and check it shares the shards' vocabulary; None: train from scratch."""
    init = resolve_source(cfg.train.init_from, cache)
    if init is None:
        if cfg.train.init_from:
            console.print(f"no version holds {cfg.train.init_from} yet: training from scratch")
        return None
    theirs = vocabulary_hash(init.path) if not init.is_checkpoint and (init.path / "tokenizer.json").is_file() else None
    if theirs is not None and theirs != vocabulary:
        if cfg.tokenizer.retrain:
            console.print(f"tokenizer.retrain: a new vocabulary, so training starts from scratch, not from {init.ref}")
            return None
        raise InputError(
            f"train.init_from {init.ref} has vocabulary {theirs} but the shards use {vocabulary}; "
            "continue with its vocabulary (rerun `lathe run tokenizer --force` without tokenizer.retrain) "
            "or train from scratch (unset train.init_from)"
        )
    console.print(f"continuing from {init.ref}" + (f" (version {init.version})" if init.version else ""))
    return init


def training_mixture(shards: Upstream, cfg: TrainSections) -> list[StreamDraw]:
    """The shards' streams mixed for this run: the new snapshot's and a replay share of earlier ones."""
    details = shards.details
    streams = [StreamInfo.model_validate(s) for s in details["streams"]]
    epoch = sum(s.train_samples for s in streams)  # for `ep` durations, before the mixture is known; close enough
    budget = run_samples(cfg.train.max_duration, cfg.train.global_train_batch_size, cfg.shards.seq_len, epoch)
    return plan_mixture(streams, details.get("new_stream"), cfg.train.mixture.replay, budget)


def node_rank() -> int:
    """This node's index in a multi-node job (NODE_RANK, as a Kubernetes Indexed Job sets it); 0 alone."""
    return int(os.environ.get("NODE_RANK") or 0)


def multi_node(nproc: int) -> bool:
    """Whether the job spans more ranks than this node runs (WORLD_SIZE counts every node's)."""
    return int(os.environ.get("WORLD_SIZE") or nproc) > nproc


def run_name(cfg: TrainSections, fingerprint: str) -> str:
    """The Composer / W&B run name: the same on every node of a job (it is the stage's fingerprint)."""
    return f"{cfg.profile}-train-{fingerprint}"


def join_training(cfg: TrainSections, inputs: dict[str, Upstream], fingerprint: str, console: Console) -> Path:
    """Node k > 0 of a multi-node job: run this node's ranks of the job node 0 runs as the train stage.

    Node 0 alone keeps the stage's books (manifest, MLflow run, export, registry); this node
    needs the finished tokenizer and shards stages where node 0 sees them (shared storage, as
    the Kubernetes Job mounts it) and a ``train.save_folder`` in an object store, which every
    node resumes from. Its logs go to ``<profile>/train-node<k>``. Returns that folder.
    """
    from lathe.training.trainer import preflight

    rank = node_rank()
    if not cfg.train.save_folder:
        raise InputError(
            f"node {rank} of a multi-node job: train.save_folder must be an object-store URI every node "
            "reads (Composer stages it through each node's disk); set it"
        )
    out = inputs["shards"].dir.parent / f"train-node{rank}"
    out.mkdir(parents=True, exist_ok=True)
    job, _ = build_job(cfg, inputs, out, run_name(cfg, fingerprint), console)
    preflight(job)
    console.print(f"node {rank}: {cfg.train.nproc} rank(s) of {job.run_name}; node 0 exports and registers")
    launch(job, cfg.train.nproc, out)
    return out


def build_job(
    cfg: TrainSections,
    inputs: dict[str, Upstream],
    out_dir: Path,
    run_name: str,
    console: Console,
    mlflow_uri: str = "",
    mlflow_run_id: str | None = None,
) -> tuple[TrainJob, list[StreamDraw]]:
    """The job every rank runs, from the config and the finished tokenizer and shards stages."""
    tokenizer = inputs["tokenizer"].path("tokenizer")
    init = initial_weights(cfg, out_dir / "init", vocabulary_hash(tokenizer), console)
    draws = training_mixture(inputs["shards"], cfg)
    job = TrainJob(
        train=cfg.train,
        seq_len=cfg.shards.seq_len,
        streams=draws,
        validation=validation_roles(draws),
        tokenizer=str(tokenizer),
        out_dir=str(out_dir.resolve()),
        run_name=run_name,
        mlflow_uri=mlflow_uri,
        mlflow_run_id=mlflow_run_id,
        init_weights=str(init.path) if init else None,
        init_ref=init.ref if init else None,
        parent_version=init.version if init else "",
    )
    return job, draws


def registered_summary(
    cfg: TrainSections,
    fingerprint: str,
    shards: Upstream,
    job: TrainJob,
    draws: list[StreamDraw],
    summary: dict[str, Any],
    hf_dir: Path,
    metrics_file: Path,
    run_id: str | None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Register a finished run's export under its lineage tags (with an MLflow run to hang it on) and return
    its summary completed with the mixture, the version and the throughput."""
    version = None
    if run_id is not None:
        lineage = {
            "lathe.profile": cfg.profile,
            "lathe.fingerprint": fingerprint,
            "lathe.parent_version": job.parent_version,
            "lathe.data_snapshot": str(shards.details.get("data_snapshot") or ""),
            "lathe.tokenizer": vocabulary_hash(Path(job.tokenizer)),
            "lathe.shards": str(shards.manifest.get("fingerprint", "")),
            "lathe.method": "continued" if job.init_ref else "pretrain",
            "lathe.tokens": str(summary["tokens"]),
            "lathe.val_loss": "" if summary.get("final_val_loss") is None else f"{summary['final_val_loss']:.6f}",
            **(tags or {}),
        }
        version = ModelRegistry(job.train.registered_model).register(hf_dir, run_id, lineage)
    return summary | dict(
        mixture=[d.model_dump(mode="json") for d in draws],
        validation=job.validation,
        registered_model=job.train.registered_model,
        model_version=version,
        tokens_per_s=last_metric(metrics_file, "throughput/tokens_per_sec"),
        mfu=last_metric(metrics_file, "throughput/device/mfu"),
    )


def train_result(summary: dict[str, Any], artifacts: list[Path], outputs: dict[str, str] | None = None) -> StageResult:
    """What the train stage reports, from its (or its sweep winner's) summary."""
    return StageResult(
        counts={"batches": summary["batches"], "tokens": summary["tokens"], "parameters": summary["parameters"]},
        metrics={
            k: float(summary[k])
            for k in ("initial_val_loss", "final_val_loss", "initial_replay_val_loss", "final_replay_val_loss", "tokens_per_s")
            if summary.get(k) is not None
        },
        artifacts=artifacts,
        details=summary,
        outputs=outputs or {},
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
    if summary.get("final_replay_val_loss") is not None:
        before = summary.get("initial_replay_val_loss")
        console.print(
            f"earlier snapshots' validation loss {'' if before is None else f'{before:.3f} -> '}"
            f"{summary['final_replay_val_loss']:.3f}"
        )
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
