"""Bits per byte on held-out text: a model's figure beside general-purpose compressors', on the same bytes.

Loss per token depends on the vocabulary (a bigger vocabulary has fewer, harder tokens), so two
models with different tokenizers cannot be compared on it. Bits per byte can: the summed loss of a
document's tokens (nats) is the code length the model needs for the document, divided by ln 2 and by
the document's UTF-8 bytes. The compressors give the same figure for the same bytes, each document
compressed on its own (gzip -9 and xz -9e): the line any model of code must be far below.
"""

from __future__ import annotations

import gzip
import lzma
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lathe.core.errors import InputError

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    # mtime=0: the same bytes compress to the same stream (the size does not depend on it)
    "gzip-9": lambda data: gzip.compress(data, compresslevel=9, mtime=0),
    "xz-9e": lambda data: lzma.compress(data, preset=9 | lzma.PRESET_EXTREME),
}


def bits_per_byte(nats: float, n_bytes: int) -> float:
    """Bits per byte of a code length of ``nats`` (summed natural-log loss) for ``n_bytes`` bytes: nats / ln 2 / bytes."""
    if n_bytes <= 0:
        raise ValueError(f"bits per byte needs at least one byte, got {n_bytes}")
    return nats / math.log(2) / n_bytes


def _as_bytes(documents: Iterable[str | bytes]) -> list[bytes]:
    """Documents as UTF-8 bytes; empty ones are left out (no bytes to predict, but a compressor's header)."""
    out = [d.encode("utf-8") if isinstance(d, str) else d for d in documents]
    return [d for d in out if d]


def compressed_bits_per_byte(documents: Iterable[str | bytes], compressor: str) -> float:
    """8 * compressed bytes / raw bytes, both summed over the (non-empty) documents, each compressed on its own."""
    if compressor not in COMPRESSORS:
        raise InputError(f"unknown compressor {compressor!r}; choose one of {', '.join(COMPRESSORS)}")
    data = _as_bytes(documents)
    if not data:
        raise InputError("no non-empty documents to compress")
    compress = COMPRESSORS[compressor]
    return 8 * sum(len(compress(d)) for d in data) / sum(len(d) for d in data)


def packed_documents(
    samples: Iterable[Iterable[int]], eos_id: int, pad_id: int, skip_ids: Collection[int] = ()
) -> Iterator[list[int]]:
    """The documents packed into ``samples`` (the shards stage's layout), in order, as token ids without their end.

    Packing concatenates documents that each end in ``eos_id`` and pads only the tail of a writer part's last
    sample, so stripping each sample's trailing ``pad_id`` and cutting at every ``eos_id`` gives the documents
    back whole, across sample and part boundaries. A document holding any of ``skip_ids`` (the FIM sentinels:
    a transformed document, not the text as written) is left out, and so is an unfinished one at the end.
    """
    skip = set(skip_ids)
    doc: list[int] = []
    for sample in samples:
        ids = [int(t) for t in sample]
        while ids and ids[-1] == pad_id:
            ids.pop()
        for t in ids:
            if t != eos_id:
                doc.append(t)
                continue
            if doc and not skip.intersection(doc):
                yield doc
            doc = []


@dataclass(frozen=True)
class DocumentLoss:
    """A model's code length for one document."""

    nats: float  # summed natural-log loss over the document's tokens
    tokens: int
    bytes: int  # the document's UTF-8 bytes

    @property
    def bits_per_byte(self) -> float:
        """This document's bits per byte."""
        return bits_per_byte(self.nats, self.bytes)


def _windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, first scored, end) positions of the windows that score positions 1..n-1 of an ``n``-token sequence once each.

    The first window scores all it holds; each later one moves on by ``stride`` and scores only its
    new positions, so every token after the first window sees at least ``context - stride`` tokens before it.
    """
    out, scored = [], 1
    while scored < n:
        end = min(n, max(scored + stride, context))
        begin = max(0, end - context)
        out.append((begin, scored, end))
        scored = end
    return out


def document_losses(
    model_dir: Path, documents: Sequence[str], batch_size: int = 8, stride: int | None = None, device: str = "cpu"
) -> list[DocumentLoss]:
    """Summed loss of the HF causal LM in ``model_dir`` over each non-empty document's tokens (no FIM).

    Each document follows an ``<|endoftext|>``, as in the packed training sequences (every document
    there ends with one), so its first token is predicted too. A document longer than the context is
    scored in sliding windows (``stride``: half the context by default), each token exactly once.
    """
    import torch
    from transformers import AutoTokenizer

    from lathe.core.quant import load_causal_lm

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.eos_token_id is None:
        raise InputError(f"{model_dir}: the tokenizer has no end-of-text token to start a document after")
    model = load_causal_lm(model_dir, device)
    context = int(model.config.max_position_embeddings)
    stride = stride or max(1, context // 2)
    if not 0 < stride < context:
        raise InputError(f"stride must be between 1 and the context ({context}) - 1, got {stride}")
    texts = [d for d in documents if d]
    sequences = [[tok.eos_token_id, *tok.encode(text, add_special_tokens=False)] for text in texts]
    # every window of every document, batched together: (document, begin, first scored, end)
    windows = [(i, *w) for i, seq in enumerate(sequences) for w in _windows(len(seq), context, stride)]
    nats = [0.0] * len(sequences)
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        width = max(end - begin for _, begin, _, end in batch)
        # right padding: a causal model's outputs at the real positions do not see the padding after them
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (doc, begin, _, end) in enumerate(batch):
            ids[row, : end - begin] = torch.tensor(sequences[doc][begin:end])
            mask[row, : end - begin] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        logp = torch.log_softmax(logits, dim=-1).cpu()
        for row, (doc, begin, scored, end) in enumerate(batch):
            # the output at position p predicts token p + 1
            targets = ids[row, scored - begin : end - begin]
            picked = logp[row, scored - begin - 1 : end - begin - 1].gather(1, targets[:, None])
            nats[doc] -= float(picked.double().sum())
    return [DocumentLoss(n, len(seq) - 1, len(text.encode("utf-8"))) for n, seq, text in zip(nats, sequences, texts)]


def model_bits_per_byte(losses: Sequence[DocumentLoss]) -> float:
    """Bits per byte over all documents: summed nats over summed bytes (long documents weigh by their bytes)."""
    return bits_per_byte(sum(d.nats for d in losses), sum(d.bytes for d in losses))


def bpb_report(model_dir: Path, documents: Sequence[str], batch_size: int = 8, device: str = "cpu") -> dict[str, Any]:
    """The model's bits per byte beside every compressor's, on exactly the same (non-empty) documents."""
    losses = document_losses(model_dir, documents, batch_size=batch_size, device=device)
    kept = [d for d in documents if d]
    report: dict[str, Any] = {"model": model_bits_per_byte(losses)}
    report |= {name: compressed_bits_per_byte(kept, name) for name in COMPRESSORS}
    report["documents"] = len(losses)
    report["bytes"] = sum(d.bytes for d in losses)
    report["tokens"] = sum(d.tokens for d in losses)
    return report
