"""LoRA: low-rank adapters on a Llama checkpoint, saved on their own and merged for serving.

Fine-tuning with adapters trains a few percent of the parameters (the base weights are
frozen), so optimizer state and checkpoints shrink accordingly; the adapter is saved on its
own (what a later run can load onto the same base) and merged into the base weights for
serving, which then needs nothing from peft: the merged model is a plain Llama checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import LlamaForCausalLM, PreTrainedModel

from lathe.core.errors import ConfigError
from lathe.training.config import LoraConfig


def with_adapters(model: PreTrainedModel, cfg: LoraConfig) -> PeftModel:
    """``model`` with a LoRA adapter on each of ``cfg.target_modules``; only the adapters train."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    unknown = sorted(set(cfg.target_modules) - names)
    if unknown:
        raise ConfigError(f"LoRA target modules {unknown} are not linear layers of the model; choose from {sorted(names)}")
    peft_cfg = PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # peft annotates int but only divides by it: a float scale works
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def trainable_share(model: torch.nn.Module) -> float:
    """Share of the model's parameters that train (requires_grad)."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / total


def save_adapter(model: PeftModel, out: Path) -> None:
    """The adapter alone (its weights and peft's config), loadable onto the same base with :func:`load_adapter`."""
    model.save_pretrained(str(out))


def load_adapter(base: PreTrainedModel, adapter: Path) -> PeftModel:
    """A saved adapter on ``base`` (the model it was trained on), for inference or further training."""
    return PeftModel.from_pretrained(base, str(adapter))


def merged(model: PeftModel) -> LlamaForCausalLM:
    """The base model with the adapters folded into its weights (W + (alpha / r) B A): a plain checkpoint."""
    return model.merge_and_unload()
