"""Replay a logged loss-spike batch offline from the same shards (data determinism)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lathe.core.errors import InputError
from lathe.tokenizer.streams import release_filelocks
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


def load_batch(train_splits: list[str], record: dict[str, Any], pad_id: int, cache: Path) -> dict[str, torch.Tensor]:
    """The exact samples of a spike record from the train splits of the run's mixture (in its order),
    checked against the digests logged in training."""
    from streaming import StreamingDataset

    from lathe.training.data import streams_of

    dataset = StreamingDataset(streams=streams_of([(s, None) for s in train_splits], cache), shuffle=False, batch_size=1)
    rows = []
    try:
        for sample in record["samples"]:
            tokens = dataset[sample["index"]]["tokens"]
            if sample_digest(tokens) != sample["sha1"]:
                raise InputError(
                    f"sample {sample['index']} ({sample['shard']}:{sample['position']}) differs from the one trained on; "
                    "the shards were rewritten since"
                )
            rows.append(np.asarray(tokens, dtype=np.int64))
    finally:
        release_filelocks(dataset)
    ids = torch.from_numpy(np.stack(rows))
    return {"input_ids": ids, "labels": ids.masked_fill(ids == pad_id, -100)}


@torch.no_grad()
def replay_loss(model_dir: Path, batch: dict[str, torch.Tensor]) -> float:
    """Mean next-token loss of an exported HF model on the batch."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    model.eval()
    return float(model(input_ids=batch["input_ids"], labels=batch["labels"]).loss)
