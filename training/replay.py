"""Replay a logged loss-spike batch offline from the same shards (data determinism)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lathe.core.errors import InputError
from lathe.training.callbacks import sample_digest


def read_spike(spikes_file: Path, step: int | None = None) -> dict[str, Any]:
    """The record of the spike at ``step`` (default: the first) from loss_spikes.jsonl."""
    if not spikes_file.is_file():
        raise InputError(f"{spikes_file} not found; no loss spike was logged by that run")
    records = [json.loads(line) for line in spikes_file.read_text().splitlines() if line.strip()]
    for record in records:
        if step is None or record["step"] == step:
            return record
    raise InputError(f"no spike at step {step} in {spikes_file}; logged steps: {[r['step'] for r in records]}")


def load_batch(train_split: str, record: dict[str, Any], pad_id: int) -> dict[str, torch.Tensor]:
    """The exact samples of a spike record, checked against the digests logged in training."""
    from streaming import StreamingDataset

    dataset = StreamingDataset(local=train_split, shuffle=False, batch_size=1)
    rows = []
    for sample in record["samples"]:
        tokens = dataset[sample["index"]]["tokens"]
        if sample_digest(tokens) != sample["sha1"]:
            raise InputError(
                f"sample {sample['index']} ({sample['shard']}:{sample['position']}) differs from the one trained on; "
                "the shards were rewritten since"
            )
        rows.append(np.asarray(tokens, dtype=np.int64))
    ids = torch.from_numpy(np.stack(rows))
    return {"input_ids": ids, "labels": ids.masked_fill(ids == pad_id, -100)}


@torch.no_grad()
def replay_loss(model_dir: Path, batch: dict[str, torch.Tensor]) -> float:
    """Mean next-token loss of an exported HF model on the batch."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    model.eval()
    return float(model(input_ids=batch["input_ids"], labels=batch["labels"]).loss)
