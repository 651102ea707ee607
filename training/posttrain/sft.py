"""Supervised fine-tuning on the pretraining stack: the same Composer model (:class:`CodeLM`),
trainer and Streaming loaders, over MDS examples whose labels cover the response only.

Full fine-tuning trains every weight; with a :class:`LoraConfig` only the adapters train
(:mod:`lathe.training.posttrain.lora`), and Composer saves and restores them like any weights. The
loss is Hugging Face's causal-LM loss, which skips ``-100`` labels: prompt and padding
tokens never count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from composer.core import DataSpec
from streaming import StreamingDataLoader, StreamingDataset
from transformers import LlamaForCausalLM

from lathe.training.config import LoraConfig
from lathe.training.data import streams_of
from lathe.training.model import CodeLM
from lathe.training.posttrain.lora import with_adapters
from lathe.training.posttrain.sft_data import collate_examples

Collate = Callable[[Sequence[Mapping[str, Any]]], dict[str, torch.Tensor]]


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding tokens of a batch (prompts and answers; both sides of a preference pair): what tokens/s counts."""
    return int(sum(t.sum() for k, t in batch.items() if k.endswith("attention_mask")))


def examples_dataloader(
    split_uri: str, cache: Path, batch_size: int, collate: Collate, shuffle: bool, seed: int, num_workers: int = 0
) -> DataSpec:
    """A DataSpec over a split of variable-length examples (SFT pairs, DPO preferences), batched by ``collate``."""
    dataset = StreamingDataset(
        streams=streams_of([(split_uri, None)], cache), shuffle=shuffle, shuffle_seed=seed, batch_size=batch_size
    )
    loader = StreamingDataLoader(dataset, batch_size=batch_size, collate_fn=collate, drop_last=False, num_workers=num_workers)
    return DataSpec(loader, get_num_tokens_in_batch=real_tokens)


def sft_dataloader(split_uri: str, cache: Path, batch_size: int, pad_id: int, shuffle: bool, seed: int) -> DataSpec:
    """A DataSpec over an SFT split written by :func:`lathe.training.posttrain.sft_data.write_examples`."""
    return examples_dataloader(split_uri, cache, batch_size, collate_examples(pad_id), shuffle, seed)


def sft_model(model: LlamaForCausalLM, seq_len: int, lora: LoraConfig | None = None) -> CodeLM:
    """The Composer model to fine-tune: ``model`` itself (full), or with LoRA adapters on it."""
    return CodeLM(with_adapters(model, lora) if lora is not None else model, seq_len)
