"""The held-out code every model is measured on: the validation documents of the streams a candidate was
validated on, as written and with their language, in a seeded order that does not depend on the model.

The shards stage keeps each stream's validation documents beside its shards (``<stream>/held_out``: id,
lang, path, content). A stream written before it did holds only packed token ids: its documents are decoded
from the shards with the model's vocabulary instead (FIM-transformed ones left out), language unknown.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lathe.core.fim import FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX
from lathe.eval.bpb import packed_documents
from lathe.eval.config import BitsPerByteConfig
from lathe.tokenizer.mds import read_samples
from lathe.tokenizer.splits import stable_fraction
from lathe.tokenizer.streams import HELD_OUT

UNKNOWN = "unknown"  # the language of a document decoded from a stream without held_out/
ORDER_SALT = "eval-held-out"  # the seeded order documents are taken in (the same for every model)


@dataclass(frozen=True)
class HeldOutDocument:
    """One held-out document as written."""

    id: str
    language: str  # the data stage's `lang` (UNKNOWN when decoded from shards)
    text: str


def _from_sidecar(folder: Path) -> list[HeldOutDocument]:
    import pyarrow.parquet as pq

    table = pq.read_table(str(folder), columns=["id", "lang", "content"]).to_pylist()
    return [HeldOutDocument(r["id"], r["lang"] or UNKNOWN, r["content"]) for r in table if r["content"]]


def _decoded(split: str, model_dir: Path) -> Iterator[HeldOutDocument]:
    """A split's documents decoded from its packed samples (no FIM-transformed ones), ids by position."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    vocab = tok.get_vocab()
    if tok.eos_token_id is None or tok.pad_token_id is None:
        return
    sentinels = [vocab[t] for t in (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD) if t in vocab]
    for i, ids in enumerate(packed_documents(read_samples(split), int(tok.eos_token_id), int(tok.pad_token_id), sentinels)):
        if text := tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False):
            yield HeldOutDocument(f"{split}#{i}", UNKNOWN, text)


def held_out_documents(
    trained: dict[str, Any], model_dir: Path, cfg: BitsPerByteConfig
) -> tuple[list[HeldOutDocument], str | None]:
    """The new data's validation documents (the streams the trainer's summary names under ``validation.val``),
    in a seeded order of their ids, up to ``cfg.documents`` and ``cfg.max_bytes``. Returns them, or none and why."""
    streams = list((trained.get("validation") or {}).get("val") or [])
    if not streams:
        return [], "the trainer's summary names no validation stream (a tuned model's held-out pairs are not documents)"
    remote = [u for u in streams if "://" in u]
    if remote:
        return [], f"validation stream {remote[0]} is in an object store; only local streams are read back"
    documents: list[HeldOutDocument] = []
    for uri in streams:
        sidecar, split = Path(uri) / HELD_OUT, f"{uri}/val"
        if sidecar.is_dir():
            documents += _from_sidecar(sidecar)
        elif os.path.isfile(os.path.join(split, "index.json")):
            documents += list(_decoded(split, model_dir))
        else:
            return [], f"validation split {split} is gone"
    if not documents:
        return [], "the validation split holds no document without the FIM transform"
    documents.sort(key=lambda d: stable_fraction(d.id, ORDER_SALT))
    taken, size = [], 0
    for doc in documents:
        taken.append(doc)
        size += len(doc.text.encode("utf-8"))
        if len(taken) >= cfg.documents or size >= cfg.max_bytes:
            break
    return taken, None
