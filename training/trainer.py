"""The Composer training run one rank executes, and the HF export at the end.

`run_training` is what every rank runs (`python -m lathe.training.worker JOB.json`, started by
`lathe.training.launcher` with the distributed variables set), which also spans nodes through
NODE_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from composer import Evaluator, Trainer
from composer.algorithms import GradientClipping
from composer.callbacks import LRMonitor, MemoryMonitor, SpeedMonitor
from composer.optim import CosineAnnealingWithWarmupScheduler
from composer.utils import dist, get_device, reproducibility

from lathe.core.errors import InputError
from lathe.core.models import ModelSource
from lathe.tokenizer.special import EOS, PAD
from lathe.tokenizer.streams import release_filelocks
from lathe.tokenizer.vocab import copy_tokenizer, load_tokenizer
from lathe.training.callbacks import JsonlLogger, LossSpikeMonitor, MLflowRunLogger, TimeBudget, TrainMetricsEvery
from lathe.training.config import ComposerConfig, OptimizerConfig
from lathe.training.data import build_dataloader, check_split, registering_streams
from lathe.training.init import check_architecture, load_initial_weights
from lathe.training.job import METRICS, MODEL_DIR, SPIKES, SUMMARY, TrainJob, job_folder
from lathe.training.model import build_model, llama_config, parameter_count
from lathe.training.optim import build_optimizer

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


def preflight(job: TrainJob) -> dict[str, Any]:
    """Every check that can fail on user input, before any compute is spent."""
    tc = job.train
    tok = load_tokenizer(Path(job.tokenizer))
    vocab = tok.get_vocab_size()
    if tc.model.vocab_size is not None and tc.model.vocab_size != vocab:
        raise InputError(
            f"train.model.vocab_size={tc.model.vocab_size} but the tokenizer has {vocab} tokens; "
            "unset train.model.vocab_size or retrain the tokenizer"
        )
    for draw in job.streams:
        if draw.choose:
            check_split(f"{draw.uri}/train")
    if not job.validation.get("val"):
        raise InputError("no stream has validation samples; raise shards.val_fraction")
    for uris in job.validation.values():
        for uri in uris:
            check_split(f"{uri}/val")
    seq_len = job.seq_len
    if seq_len > tc.model.max_seq_len:
        raise InputError(f"shards.seq_len={seq_len} exceeds train.model.max_seq_len={tc.model.max_seq_len}")
    folder = job_folder(job)
    if "://" not in folder:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            probe = Path(folder) / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise InputError(f"checkpoint folder {folder} is not writable ({exc.strerror}); fix train.save_folder") from None
    pad_id, eos_id = tok.token_to_id(PAD), tok.token_to_id(EOS)
    if job.init_weights:  # the parent's shape must be the configured one
        check_architecture(
            ModelSource(job.init_ref or job.init_weights, Path(job.init_weights)), llama_config(tc.model, vocab, eos_id, pad_id)
        )
    return {"vocab_size": vocab, "pad_id": pad_id, "eos_id": eos_id, "seq_len": seq_len}


def _wandb_logger(tc: ComposerConfig, run_name: str, out: Path) -> Any:
    import wandb
    from composer.loggers import WandBLogger

    # wandb 0.31 dropped Run.get_url, which Composer 0.32 still calls.
    run_cls = wandb.sdk.wandb_run.Run
    if not hasattr(run_cls, "get_url"):
        run_cls.get_url = lambda self: self.url  # type: ignore[attr-defined]
    online = tc.wandb.online and bool(os.environ.get("WANDB_API_KEY"))
    os.environ.setdefault("WANDB_MODE", "online" if online else "offline")

    class CheckpointlessWandBLogger(WandBLogger):
        """Checkpoints live in save_folder, never in W&B: autoresume must not ask W&B's API
        for them (which needs a login even for an offline run)."""

        def download_file(self, *args: Any, **kwargs: Any) -> None:
            raise NotImplementedError("lathe keeps checkpoints in train.save_folder")

    return CheckpointlessWandBLogger(
        project=tc.wandb.project,
        name=run_name,
        init_kwargs={"dir": str(out), "id": run_name, "resume": "allow", "config": tc.model_dump(mode="json")},
    )


def run_loggers(tc: ComposerConfig, out: Path, run_name: str, mlflow_uri: str, mlflow_run_id: str | None) -> list[Any]:
    """metrics.jsonl, the stage's MLflow run and W&B (when enabled): every Composer run logs to all three."""
    loggers: list[Any] = [JsonlLogger(out / METRICS)]
    if mlflow_run_id:
        loggers.append(MLflowRunLogger(mlflow_uri, mlflow_run_id))
    if tc.wandb.enabled:
        loggers.append(_wandb_logger(tc, run_name, out))
    return loggers


def start_ranks() -> str:
    """The device ("gpu" or "cpu"), with the process group up when the launcher started several ranks."""
    device = "gpu" if torch.cuda.is_available() else "cpu"
    if dist.get_world_size() > 1 and not dist.is_initialized():
        # Before any StreamingDataset: it would otherwise make (and tear down) its own group.
        dist.initialize_dist(get_device(device))
    return device


def per_rank_batch(tc: ComposerConfig, setting: str) -> int:
    """Each rank's share of the global batch (``setting`` names it in errors)."""
    world = dist.get_world_size()
    if tc.global_train_batch_size % world:
        raise InputError(f"{setting}.global_train_batch_size={tc.global_train_batch_size} is not divisible by {world} ranks")
    return tc.global_train_batch_size // world


def composer_trainer(
    tc: ComposerConfig,
    model: Any,
    train: Any,
    evaluators: list[Evaluator],
    *,
    optimizer: OptimizerConfig,
    warmup: str,
    device: str,
    folder: str | None,
    run_name: str,
    loggers: list[Any],
    callbacks: list[Any],
    eval_subset_num_batches: int = -1,
) -> Trainer:
    """The Composer Trainer every lathe run uses: cosine schedule with warmup, gradient clipping, DDP or
    FSDP2 (with activation checkpointing and CPU offload), checkpoints every save_interval and autoresume
    (``folder`` None: neither, for a profiling trial)."""
    from composer.utils.parallelism import FSDP2Config, ParallelismConfig

    parallelism = None
    if tc.fsdp:
        parallelism = ParallelismConfig(
            fsdp2=FSDP2Config(
                reshard_after_forward=tc.fsdp == "FULL_SHARD",
                activation_checkpointing=tc.activation_checkpointing,
                activation_cpu_offload=tc.activation_cpu_offload,
            )
        )
    callbacks = [SpeedMonitor(window_size=5, gpu_flops_available=tc.peak_flops_per_device), LRMonitor(), *callbacks]
    if device == "gpu":
        callbacks.append(MemoryMonitor())
    trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters only
    return Trainer(
        model=model,
        train_dataloader=train,
        eval_dataloader=evaluators,
        max_duration=tc.max_duration,
        optimizers=build_optimizer(trainable, optimizer),
        schedulers=CosineAnnealingWithWarmupScheduler(t_warmup=warmup, alpha_f=tc.alpha_f),
        algorithms=[GradientClipping(clipping_type="norm", clipping_threshold=tc.grad_clip_norm)],
        eval_interval=tc.eval_interval if evaluators else 1,  # (a trial has no evaluators: Composer's defaults)
        eval_subset_num_batches=eval_subset_num_batches if evaluators else -1,
        precision=tc.precision,
        device=device,
        device_train_microbatch_size=tc.device_train_microbatch_size,
        parallelism_config=parallelism,
        save_folder=folder,
        save_interval=tc.save_interval,
        save_num_checkpoints_to_keep=tc.save_num_checkpoints_to_keep,
        autoresume=folder is not None,
        run_name=run_name,
        loggers=loggers,
        callbacks=callbacks,
        seed=tc.seed,
        progress_bar=True,
        log_to_console=False,
    )


def fit_with_baseline(
    trainer: Trainer, losses: Callable[[Trainer], dict[str, float]]
) -> tuple[int, dict[str, float], dict[str, float]]:
    """Evaluate, train to max_duration, evaluate: (batch resumed at, figures before, figures after).

    A resumed run has no "before" (its starting model is gone); a run killed after its last batch
    only evaluates, so the export is all that is left to do.
    """
    resumed_at = int(trainer.state.timestamp.batch)
    initial: dict[str, float] = {}
    if resumed_at == 0:
        trainer.eval()  # the starting model's figures: the baseline training must beat
        initial = losses(trainer)
    max_duration = trainer.state.max_duration
    assert max_duration is not None
    if trainer.state.timestamp.get(max_duration.unit).value < max_duration.value:
        trainer.fit()
    else:
        trainer.eval()
    return resumed_at, initial, losses(trainer)


def full_state_dict(module: torch.nn.Module, fsdp: str | None) -> dict[str, Any] | None:
    """The full weights of a sharded (FSDP) module, gathered with every rank taking part; None when not sharded."""
    if not fsdp:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def run_training(job: TrainJob) -> dict[str, Any]:
    """Train on one rank; rank 0 exports the model and returns (and writes) the summary."""
    tc = job.train
    out = Path(job.out_dir)
    facts = preflight(job)
    device = start_ranks()
    if job.device_memory_mb:
        limit_device_memory(device, job.device_memory_mb)
    world = dist.get_world_size()
    per_rank = per_rank_batch(tc, "train")
    cache = out / "stream-cache"
    with registering_streams():  # concurrent jobs on one host (a sweep) must not race for Streaming's shared memory
        train_spec, train_ds = build_dataloader(
            [(f"{d.uri}/train", d.choose) for d in job.streams if d.choose],
            cache / "train",
            per_rank,
            True,
            tc.seed,
            facts["pad_id"],
            tc.num_workers,
            tc.num_canonical_nodes,
        )
        datasets, evaluators = [train_ds], []
        for label, uris in ({} if job.trial else job.validation).items():
            spec, dataset = build_dataloader(
                [(f"{u}/val", None) for u in uris],
                cache / label,
                per_rank,
                False,
                tc.seed,
                facts["pad_id"],
                tc.num_workers,
                tc.num_canonical_nodes,
            )
            metrics = ["LanguageCrossEntropy", "LanguagePerplexity", *(["DistillKL"] if job.teacher else [])]
            evaluators.append(Evaluator(label=label, dataloader=spec, metric_names=metrics))
            datasets.append(dataset)
    # Seed before building the model: its initial weights must not depend on what ran before.
    reproducibility.seed_all(tc.seed)
    model = build_model(tc.model, facts["vocab_size"], facts["eos_id"], facts["pad_id"], facts["seq_len"])
    optimizer, warmup = tc.optimizer, tc.warmup
    if job.init_weights:  # continued pretraining: the parent's weights, a fresh optimizer, its own schedule
        load_initial_weights(model.model, ModelSource(job.init_ref or job.init_weights, Path(job.init_weights)))
        optimizer, warmup = tc.optimizer.model_copy(update={"lr": tc.continued.lr}), tc.continued.warmup
    if job.teacher:  # distillation: the same student, its loss also pulled towards the teacher's logits
        from transformers import AutoModelForCausalLM

        from lathe.training.distill.loss import DistillLM

        t = job.teacher
        teacher = AutoModelForCausalLM.from_pretrained(t.path, dtype=torch.float32)
        model = DistillLM(model.model, teacher, facts["seq_len"], t.temperature, t.kl_weight, t.ce_weight)
    spikes = LossSpikeMonitor(tc.loss_spike, out / SPIKES, train_ds)
    trainer = composer_trainer(
        tc,
        model,
        train_spec,
        evaluators,
        optimizer=optimizer,
        warmup=warmup,
        device=device,
        folder=None if job.trial else job_folder(job),
        run_name=job.run_name,
        loggers=run_loggers(tc, out, job.run_name, job.mlflow_uri, job.mlflow_run_id),
        callbacks=[
            spikes,
            TrainMetricsEvery(tc.train_metrics_every),
            *([TimeBudget(tc.time_budget_s)] if tc.time_budget_s else []),
        ],
        eval_subset_num_batches=tc.eval_subset_num_batches,
    )
    if job.trial:  # a profiling trial: its batches and the speed monitor's throughput in metrics.jsonl, nothing else
        trainer.fit()
        trainer.close()
        for dataset in datasets:
            release_filelocks(dataset)
        return {"batches": int(trainer.state.timestamp.batch), "world_size": world}
    resumed_at, initial, final = fit_with_baseline(trainer, val_losses)
    final_val = final.get("val")
    summary = {
        "run_name": job.run_name,
        "resumed_at_batch": resumed_at,
        "batches": int(trainer.state.timestamp.batch),
        "tokens": int(trainer.state.timestamp.token),
        "initial_val_loss": initial.get("val"),
        "final_val_loss": final_val,
        "final_val_perplexity": math.exp(final_val) if final_val is not None else None,
        # the earlier snapshots' validation data (present when the run replays earlier streams)
        "initial_replay_val_loss": initial.get("replay_val"),
        "final_replay_val_loss": final.get("replay_val"),
        # distillation: KL(teacher || student) per validation token, before and after
        **(
            {
                "initial_val_kl": initial.get("val_kl"),
                "final_val_kl": final.get("val_kl"),
                "teacher": job.teacher.ref,
                "teacher_version": job.teacher.version,
            }
            if job.teacher
            else {}
        ),
        "parameters": parameter_count(model.model),
        "world_size": world,
        "loss_spikes": spikes.spikes,
        "init_from": job.init_ref,  # None: trained from scratch
        "parent_version": job.parent_version,
    }
    state_dict = full_state_dict(model.model, tc.fsdp)
    if dist.get_global_rank() == 0:
        export_model(model.model, Path(job.tokenizer), out / MODEL_DIR, state_dict)
        (out / SUMMARY).write_text(json.dumps(summary, indent=2))
    trainer.close()
    for dataset in datasets:
        release_filelocks(dataset)
    return summary


def limit_device_memory(device: str, megabytes: int) -> None:
    """Give this rank at most ``megabytes`` of its device's memory from here on, so that a sweep's trial
    of a model too big for the device runs out of memory as it would on a smaller device.

    GPU: PyTorch's caching allocator refuses beyond that share of the device. CPU: the process's data
    limit (RLIMIT_DATA: private writable memory) becomes what it uses now plus ``megabytes``.
    """
    if device == "gpu":
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, megabytes * 2**20 / total))
        return
    import resource

    status = Path("/proc/self/status").read_text()
    used_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmData:")))
    limit = used_kb * 1024 + megabytes * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))


def val_losses(trainer: Trainer) -> dict[str, float]:
    """The last evaluation's cross-entropy per evaluator label (and, distilling, ``<label>_kl``: its KL to the teacher)."""
    figures = {}
    for label, m in trainer.state.eval_metrics.items():
        if "LanguageCrossEntropy" in m:
            figures[label] = float(m["LanguageCrossEntropy"].compute())
        if "DistillKL" in m:
            figures[f"{label}_kl"] = float(m["DistillKL"].compute())
    return figures


def export_model(
    model: PreTrainedModel | PeftModel, tokenizer_dir: Path, dest: Path, state_dict: dict[str, Any] | None = None
) -> Path:
    """A standard HF checkpoint (safetensors) with the tokenizer beside it; ``state_dict``
    carries the gathered full weights of a sharded (FSDP) model."""
    shutil.rmtree(dest, ignore_errors=True)
    model.save_pretrained(str(dest), safe_serialization=True, state_dict=state_dict)
    copy_tokenizer(tokenizer_dir, dest)
    return dest
