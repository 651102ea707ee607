"""The post-training run one rank executes: SFT or DPO of a registered model, then the export.

`run_finetune` is what every rank runs under lathe's launcher, exactly as pretraining's `run_training`: the same Trainer (DDP or
FSDP2 with activation checkpointing and CPU offload), checkpoints, autoresume and loggers.
With LoRA only the adapters train; rank 0 saves the adapter on its own and exports the
base with the adapter merged in, a plain Llama checkpoint that serving loads like any other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from composer import Evaluator, Trainer
from composer.utils import dist, reproducibility
from peft import PeftModel
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from lathe.tokenizer.special import PAD
from lathe.tokenizer.streams import release_filelocks
from lathe.tokenizer.vocab import load_tokenizer
from lathe.training.job import ADAPTER_DIR, MODEL_DIR, SUMMARY, FinetuneJob, job_folder
from lathe.training.model import CodeLM, parameter_count
from lathe.training.posttrain.dpo import DPOModel, collate_preferences
from lathe.training.posttrain.lora import merged, save_adapter, trainable_share, with_adapters
from lathe.training.posttrain.sft import examples_dataloader
from lathe.training.posttrain.sft_data import collate_examples
from lathe.training.trainer import (
    composer_trainer,
    export_model,
    fit_with_baseline,
    full_state_dict,
    per_rank_batch,
    run_loggers,
    start_ranks,
)

# The evaluation figures each method reports, by Composer metric name -> summary key.
FIGURES = {
    "sft": {"LanguageCrossEntropy": "val_loss"},
    "dpo": {"ChosenCrossEntropy": "val_loss", "PreferenceAccuracy": "preference_accuracy", "RewardMargin": "reward_margin"},
}


def base_model(job: FinetuneJob) -> Any:
    """The model to tune, from the resolved ``init_from`` directory (fp32: the trainer casts for amp)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(job.base, dtype=torch.float32)


def composer_model(job: FinetuneJob, policy: PreTrainedModel | PeftModel) -> Any:
    """The Composer model of the method: the causal-LM loss on responses (SFT) or the DPO loss."""
    if job.method == "sft":
        return CodeLM(policy, job.seq_len)
    return DPOModel(policy, job.beta, job.label_smoothing, job.sft_weight)


def figures(trainer: Trainer, method: str) -> dict[str, float]:
    """The last evaluation's figures of ``method`` (``val_loss`` and, for DPO, preference accuracy and margin)."""
    metrics = trainer.state.eval_metrics.get("val", {})
    return {key: float(metrics[name].compute()) for name, key in FIGURES[method].items() if name in metrics}


def run_finetune(job: FinetuneJob) -> dict[str, Any]:
    """Tune on one rank; rank 0 exports (adapter and merged model) and returns (and writes) the summary."""
    tc = job.tune
    out = Path(job.out_dir)
    device = start_ranks()
    per_rank = per_rank_batch(tc, job.method)
    pad_id = load_tokenizer(Path(job.base)).token_to_id(PAD)
    collate = collate_examples(pad_id) if job.method == "sft" else collate_preferences(pad_id)
    cache = out / "stream-cache"
    train = examples_dataloader(f"{job.data}/train", cache / "train", per_rank, collate, True, tc.seed, tc.num_workers)
    val = examples_dataloader(f"{job.data}/val", cache / "val", per_rank, collate, False, tc.seed, tc.num_workers)
    reproducibility.seed_all(tc.seed)  # adapters are initialised at random: the same seed, the same run
    base = base_model(job)
    policy = with_adapters(base, tc.lora) if tc.lora else base
    model = composer_model(job, policy)
    evaluator = Evaluator(label="val", dataloader=val, metric_names=list(FIGURES[job.method]))
    optimizer = tc.optimizer.model_copy(update={"lr": tc.optimizer.lr * tc.lora.lr_multiplier}) if tc.lora else tc.optimizer
    trainer = composer_trainer(
        tc,
        model,
        train,
        [evaluator],
        optimizer=optimizer,
        warmup=tc.warmup,
        device=device,
        folder=job_folder(job),
        run_name=job.run_name,
        loggers=run_loggers(tc, out, job.run_name, job.mlflow_uri, job.mlflow_run_id),
        callbacks=[],
    )
    resumed_at, initial, final = fit_with_baseline(trainer, lambda t: figures(t, job.method))
    summary: dict[str, Any] = {
        "method": job.method + ("-lora" if tc.lora else ""),
        "run_name": job.run_name,
        "resumed_at_batch": resumed_at,
        "batches": int(trainer.state.timestamp.batch),
        "tokens": int(trainer.state.timestamp.token),
        **{f"initial_{k}": v for k, v in initial.items()},
        **{f"final_{k}": v for k, v in final.items()},
        "parameters": parameter_count(base),
        "trainable_share": trainable_share(policy),
        "world_size": dist.get_world_size(),
        "init_from": job.base_ref,
        "parent_version": job.parent_version,
    }
    state = full_state_dict(policy, tc.fsdp)
    if dist.get_global_rank() == 0:
        export(job, policy, state, out)
        (out / SUMMARY).write_text(json.dumps(summary, indent=2))
    trainer.close()
    for spec in (train, val):
        assert isinstance(spec.dataloader, DataLoader)  # examples_dataloader's StreamingDataLoader
        release_filelocks(spec.dataloader.dataset)
    return summary


def export(job: FinetuneJob, policy: PreTrainedModel | PeftModel, state: dict[str, Any] | None, out: Path) -> None:
    """The tuned model as an HF checkpoint with the base's tokenizer; with LoRA also the adapter alone.

    A sharded (FSDP) policy cannot merge in place: its gathered weights are loaded into a fresh
    copy on this rank's CPU first.
    """
    if not job.tune.lora:
        export_model(policy, Path(job.base), out / MODEL_DIR, state)
        return
    if state is not None:
        policy = with_adapters(base_model(job), job.tune.lora)
        policy.load_state_dict(state)
    assert isinstance(policy, PeftModel)  # with LoRA the policy is the base with adapters (with_adapters)
    save_adapter(policy, out / ADAPTER_DIR)
    export_model(merged(policy), Path(job.base), out / MODEL_DIR)
