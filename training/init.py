"""Continued pretraining: where a model's initial weights come from (``train.init_from``).

A reference is resolved once, on the driver, into a local HF directory or Composer
checkpoint that every rank loads; weights only, never optimizer state. An alias that no
version holds yet (``models:/lathe-code@production`` before the first promotion) means
"train from scratch"; any other reference that cannot be found is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lathe.core.errors import InputError
from lathe.core.models import ModelRegistry, resolve_model

_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
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


@dataclass(frozen=True)
class InitSource:
    """Resolved initial weights: a local HF directory or a Composer checkpoint file."""

    ref: str  # what the config said
    path: Path  # local HF model directory or checkpoint file
    parent_version: str = ""  # the registered version it is, when it is one (lineage)

    @property
    def is_checkpoint(self) -> bool:
        """A Composer checkpoint (a file), rather than an HF directory."""
        return self.path.is_file()


def resolve_init(ref: str | None, cache: Path) -> InitSource | None:
    """Resolve ``train.init_from``; None means train from scratch."""
    if not ref:
        return None
    if match := _ALIAS.match(ref):
        version = ModelRegistry(match["name"]).find(match["alias"])
        if version is None:
            return None  # nothing holds the alias yet: the first run trains from scratch
        return InitSource(ref, resolve_model(f"models:/{match['name']}/{version}", cache), version)
    if match := _VERSION.match(ref):
        return InitSource(ref, resolve_model(ref, cache), match["version"])
    path = Path(ref)
    if path.is_file():
        return InitSource(ref, path)
    if (path / "config.json").is_file():
        return InitSource(ref, path)
    raise InputError(f"train.init_from {ref!r} is not a models:/ URI, an HF model directory or a Composer checkpoint file")


def check_architecture(source: InitSource, built: Any) -> None:
    """Refuse (one line naming the field) initial weights whose shape differs from the configured model."""
    if source.is_checkpoint:
        return  # a checkpoint holds no config: its tensors' shapes are checked when they load
    from transformers import AutoConfig

    theirs = AutoConfig.from_pretrained(str(source.path))
    for field, setting in ARCHITECTURE.items():
        mine, other = getattr(built, field, None), getattr(theirs, field, None)
        if mine != other:
            raise InputError(f"train.init_from {source.ref}: {field} is {other} there but {mine} here ({setting}); "
                             "configure the same architecture or train from scratch (unset train.init_from)")


def load_initial_weights(model: Any, source: InitSource) -> None:
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
