"""Continued pretraining: load a model's initial weights (``train.init_from``).

The reference is resolved once, on the driver (``lathe.core.models.resolve_source``), into
a local HF directory or Composer checkpoint that every rank loads: weights only, never
optimizer state, after checking that their architecture is the configured one.
"""

from __future__ import annotations

from typing import Any

from lathe.core.errors import InputError
from lathe.core.models import ModelSource

# The LlamaConfig fields that must match for the weights to fit, and the config key a user sets for each.
ARCHITECTURE = {
    "hidden_size": "train.model.d_model",
    "num_hidden_layers": "train.model.n_layers",
    "num_attention_heads": "train.model.n_heads",
    "num_key_value_heads": "train.model.n_kv_heads",
    "intermediate_size": "train.model.ffn_hidden",
    "vocab_size": "the tokenizer's vocabulary",
    "tie_word_embeddings": "train.model.tie_embeddings",
}


def check_architecture(source: ModelSource, built: Any) -> None:
    """Refuse (one line naming the field) initial weights whose shape differs from the configured model."""
    if source.is_checkpoint:
        return  # a checkpoint holds no config: its tensors' shapes are checked when they load
    from transformers import AutoConfig

    theirs = AutoConfig.from_pretrained(str(source.path))
    for field, setting in ARCHITECTURE.items():
        mine, other = getattr(built, field, None), getattr(theirs, field, None)
        if mine != other:
            raise InputError(
                f"train.init_from {source.ref}: {field} is {other} there but {mine} here ({setting}); "
                "configure the same architecture or train from scratch (unset train.init_from)"
            )


def load_initial_weights(model: Any, source: ModelSource) -> None:
    """Copy the initial weights into ``model`` (a ``LlamaForCausalLM`` of the checked architecture)."""
    if source.is_checkpoint:
        import torch

        state = torch.load(source.path, map_location="cpu", weights_only=False)
        weights = {k.removeprefix("model."): v for k, v in state["state"]["model"].items()}
    else:
        from transformers import AutoModelForCausalLM

        weights = AutoModelForCausalLM.from_pretrained(str(source.path)).state_dict()
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise InputError(f"train.init_from {source.ref}: the weights do not fit the configured model ({first})") from None
