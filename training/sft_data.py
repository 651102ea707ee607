"""Supervised fine-tuning data: (prompt, response) pairs read, checked and encoded with loss masks.

Pairs follow llm-foundry's finetuning convention: one record per example with string
fields ``prompt`` and ``response``, in JSONL or parquet. Every record is either encoded
or dropped with a counted reason:

- ``not_json``: a JSONL line that does not parse, or parses to something other than an object;
- ``missing_field``: ``prompt`` or ``response`` absent, null or not a string;
- ``empty_response``: a response that is empty or only whitespace (nothing to learn);
- ``too_long``: prompt + response + EOS longer than the context (counted by :func:`encode_pairs`).

Loss is on the response only: labels are ``-100`` (PyTorch's ignore index) on prompt
positions, as llm-foundry's default ``decoder_only_format`` collator does. Encoded examples
are written as MDS shards (:func:`write_examples`: variable-length ``input_ids`` and
``labels``) and batched by :func:`collate_examples`, which pads each batch to its longest
example (padding is masked out of the loss and the attention).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from lathe.core.errors import InputError

IGNORE_INDEX = -100  # labels at this value add nothing to torch's cross-entropy
FIELDS = ("prompt", "response")
FORMATS = (".jsonl", ".parquet")
EncodeBatch = Callable[[list[str]], list[list[int]]]


def check_pair(record: Any) -> str | None:
    """Why a decoded record cannot be a training pair (a reason above), or None if it can."""
    if not isinstance(record, dict):
        return "not_json"
    if any(not isinstance(record.get(f), str) for f in FIELDS):
        return "missing_field"
    if not record["response"].strip():
        return "empty_response"
    return None


def _locate(path: str | Path) -> tuple[Any, str, bool]:
    """(filesystem, path in it, is a directory) for a local path or an fsspec URL (s3://, gs://, ...)."""
    import fsspec

    try:
        fs, inner = fsspec.core.url_to_fs(str(path))
        if not fs.exists(inner):
            raise InputError(f"pairs file {path} not found; check the path")
        return fs, inner, fs.isdir(inner)
    except (ImportError, ValueError, OSError) as exc:
        raise InputError(f"cannot open pairs file {path} ({exc}); install its fsspec backend (s3fs, gcsfs) and check access") from None


def read_pairs(path: str | Path) -> tuple[list[dict[str, str]], dict[str, int]]:
    """The valid pairs (``prompt``, ``response``) of a JSONL file, a parquet file or a directory of
    parquet files (as Spark writes them), in file order, and the drop counts by reason.

    Local paths and object-store URLs (through fsspec, which lathe already depends on) are
    read alike. Blank JSONL lines are skipped, not counted: they hold no record. A parquet
    input without a ``prompt`` or ``response`` column is an error, not a count per row.
    """
    fs, inner, is_dir = _locate(path)
    suffix = Path(inner).suffix
    if not is_dir and suffix not in FORMATS:
        raise InputError(f"pairs file {path} has an unknown format; use JSONL (.jsonl) or parquet (.parquet, or a directory of them)")
    if is_dir or suffix == ".parquet":
        records: Iterable[Any] = _parquet_records(fs, inner, path)
    else:
        records = _jsonl_records(fs, inner)
    rows: list[dict[str, str]] = []
    drops: Counter[str] = Counter()
    for record in records:
        reason = check_pair(record)
        if reason is None:
            rows.append({f: record[f] for f in FIELDS})
        else:
            drops[reason] += 1
    return rows, dict(sorted(drops.items()))


def _jsonl_records(fs: Any, inner: str) -> Iterable[Any]:
    """Each non-blank line decoded; a line that does not parse (or is not UTF-8) becomes None (``not_json``)."""
    with fs.open(inner, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                yield json.loads(line.decode("utf-8"))
            except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
                yield None


def _parquet_records(fs: Any, inner: str, path: str | Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(inner, filesystem=fs)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read parquet pairs {path}: {first}; replace or remove the file") from None
    missing = [f for f in FIELDS if f not in table.column_names]
    if missing:
        raise InputError(f"parquet pairs {path} lack columns {missing} (they have {table.column_names}); write prompt and response columns")
    return table.select(list(FIELDS)).to_pylist()


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


def encode_pairs(
    rows: list[dict[str, str]], encode_batch: EncodeBatch, eos_id: int, max_len: int, drops: Mapping[str, int] | None = None
) -> tuple[list[tuple[list[int], list[int]]], dict[str, int]]:
    """(input_ids, labels) of every pair that fits ``max_len``, in order, and the drop counts: ``drops``
    (those of :func:`read_pairs`) plus ``too_long``.

    Prompt and response are tokenized separately (in one ``encode_batch`` call), as
    llm-foundry does, so the mask boundary falls on a token boundary; a merge across the
    seam that joint tokenization would make is given up.
    """
    encoded = encode_batch([text for row in rows for text in (row["prompt"], row["response"])])
    if len(encoded) != 2 * len(rows):
        raise ValueError(f"encode_batch returned {len(encoded)} encodings for {2 * len(rows)} texts")
    counts = Counter(drops or {})
    examples = []
    for i in range(len(rows)):
        example = encode_pair(encoded[2 * i], encoded[2 * i + 1], eos_id, max_len)
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
