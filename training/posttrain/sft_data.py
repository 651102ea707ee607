"""Supervised fine-tuning data: (prompt, response) pairs encoded with loss masks.

Pairs follow llm-foundry's finetuning convention: one record per example with string
fields ``prompt`` and ``response`` (read and checked by the data component's ``pairs``
stage, which counts the rows it drops). Every pair is either encoded or dropped as
``too_long``: prompt + response + EOS longer than the context (:func:`encode_pairs`).

Loss is on the response only: labels are ``-100`` (PyTorch's ignore index) on prompt
positions, as llm-foundry's default ``decoder_only_format`` collator does. Encoded examples
are written as MDS shards (:func:`write_examples`: variable-length ``input_ids`` and
``labels``) and batched by :func:`collate_examples`, which pads each batch to its longest
example (padding is masked out of the loss and the attention).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lathe.core.fim import FimIds, fim_prompt

IGNORE_INDEX = -100  # labels at this value add nothing to torch's cross-entropy
EncodeBatch = Callable[[list[str]], list[list[int]]]


def encode_pair(prompt_ids: list[int], response_ids: list[int], eos_id: int, max_len: int) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) of one pair: prompt, response, EOS; labels ``-100`` on the prompt, so the
    loss is on the response and the final EOS (the model learns to stop). None if longer than ``max_len``.

    Too-long pairs are dropped rather than truncated: a cut response teaches the model to stop
    mid-function, and a cut prompt detaches the body from what it implements.
    """
    input_ids = [*prompt_ids, *response_ids, eos_id]
    if len(input_ids) > max_len:
        return None
    return input_ids, [IGNORE_INDEX] * len(prompt_ids) + [*response_ids, eos_id]


def encode_rows(
    rows: Sequence[Mapping[str, str]], answers: tuple[str, ...], encode_batch: EncodeBatch, fim: FimIds | None = None
) -> list[tuple[list[int], list[list[int]]]]:
    """Per row, (prompt ids, ids of each of its ``answers`` fields), tokenized in one ``encode_batch`` call.

    Prompt and answers are tokenized separately, as llm-foundry does, so the mask boundary
    falls on a token boundary; a merge across the seam that joint tokenization would make is
    given up. A row with a non-empty ``suffix`` (a fill-in-the-middle request, as the serving
    gateway records them) gets the FIM prompt the served model is asked with
    (:func:`lathe.core.fim.fim_prompt`, PSM), which needs ``fim``: the tokenizer's FIM ids.
    """
    fields = ("prompt", *answers, "suffix")
    encoded = encode_batch([row.get(f) or "" for row in rows for f in fields])
    if len(encoded) != len(fields) * len(rows):
        raise ValueError(f"encode_batch returned {len(encoded)} encodings for {len(fields) * len(rows)} texts")
    out = []
    for i, row in enumerate(rows):
        prompt, *rest, suffix = encoded[len(fields) * i : len(fields) * (i + 1)]
        if row.get("suffix"):
            if fim is None:
                raise ValueError("a row with a suffix needs the tokenizer's FIM ids")
            prompt = fim_prompt(prompt, suffix, fim)
        out.append((prompt, rest))
    return out


def encode_pairs(
    rows: Sequence[Mapping[str, str]],
    encode_batch: EncodeBatch,
    eos_id: int,
    max_len: int,
    drops: Mapping[str, int] | None = None,
    fim: FimIds | None = None,
) -> tuple[list[tuple[list[int], list[int]]], dict[str, int]]:
    """(input_ids, labels) of every pair that fits ``max_len``, in order, and the drop counts: ``drops``
    (those of reading the pairs) plus ``too_long``. Prompts as :func:`encode_rows` frames them."""
    counts = Counter(drops or {})
    examples = []
    for prompt, (response,) in encode_rows(rows, ("response",), encode_batch, fim):
        example = encode_pair(prompt, response, eos_id, max_len)
        if example is None:
            counts["too_long"] += 1
        else:
            examples.append(example)
    return examples, dict(sorted(counts.items()))


# Variable-length int32 arrays: vocabularies stay far below 2**31, and SFT examples vary in length.
EXAMPLE_COLUMNS = {"input_ids": "ndarray:int32", "labels": "ndarray:int32"}


def write_examples(examples: Iterable[tuple[list[int], list[int]]], out: str, compression: str | None = "zstd") -> int:
    """Write (input_ids, labels) examples as MDS shards under ``out`` (a local folder or an object-store
    URL, as Streaming's writer takes it); returns how many were written."""
    from streaming import MDSWriter

    count = 0
    with MDSWriter(out=out, columns=EXAMPLE_COLUMNS, compression=compression) as writer:
        for input_ids, labels in examples:
            writer.write({"input_ids": np.asarray(input_ids, dtype=np.int32), "labels": np.asarray(labels, dtype=np.int32)})
            count += 1
    return count


def pad_batch(inputs: Sequence[Any], labels: Sequence[Any], pad_id: int, length: int) -> dict[str, torch.Tensor]:
    """{input_ids, labels, attention_mask} of sequences right-padded to ``length``: ``pad_id`` in the
    inputs, ``-100`` in the labels and 0 in the attention mask on padding."""
    input_ids = torch.full((len(inputs), length), pad_id, dtype=torch.long)
    targets = torch.full((len(inputs), length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(inputs), length), dtype=torch.long)
    for row, (ids, labs) in enumerate(zip(inputs, labels)):
        n = len(ids)
        input_ids[row, :n] = torch.tensor(np.asarray(ids), dtype=torch.long)  # a copy: shard arrays are read-only
        targets[row, :n] = torch.tensor(np.asarray(labs), dtype=torch.long)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "labels": targets, "attention_mask": attention}


def collate_examples(pad_id: int) -> Callable[[Sequence[Mapping[str, Any]]], dict[str, torch.Tensor]]:
    """Examples -> :func:`pad_batch` to the batch's longest example."""

    def fn(samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(s["input_ids"]) for s in samples)
        return pad_batch([s["input_ids"] for s in samples], [s["labels"] for s in samples], pad_id, longest)

    return fn
