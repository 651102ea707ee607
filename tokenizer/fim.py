"""Fill-in-the-middle: turn a document into prefix/suffix/middle training order.

Following Bavarian et al. (2022) and StarCoder: with probability ``rate`` a document is
split at two uniformly random character positions into (prefix, middle, suffix) and
emitted in the layout of :func:`lathe.core.fim.fim_prompt` (PSM or SPM) followed by the
middle and ``<|endoftext|>``; the served model builds its prompts with the same function.

Every decision is drawn from a generator seeded by (seed, document id), so the result
depends on the document alone, not on partitioning or order.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from lathe.core.fim import FimIds, fim_prompt
from lathe.tokenizer.special import EOS, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

Encode = Callable[[str], list[int]]
EncodeBatch = Callable[[list[str]], list[list[int]]]


@dataclass(frozen=True)
class FimSplit:
    """A document cut for FIM; ``prefix + middle + suffix`` is the document."""

    mode: str  # "psm" | "spm"
    prefix: str
    middle: str
    suffix: str


def fim_split(text: str, doc_id: str, seed: int, rate: float, spm_rate: float) -> FimSplit | None:
    """The FIM cut of a document, or None when it stays a plain left-to-right document."""
    rng = random.Random(f"fim:{seed}:{doc_id}")
    if rng.random() >= rate:
        return None
    i, j = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    mode = "spm" if rng.random() < spm_rate else "psm"
    return FimSplit(mode, text[:i], text[i:j], text[j:])


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the tokens the document encoding inserts."""

    eos: int
    prefix: int
    middle: int
    suffix: int

    @classmethod
    def from_vocab(cls, token_to_id: Callable[[str], int | None]) -> SpecialIds:
        """Look the ids up in a tokenizer's vocabulary."""
        ids = {name: token_to_id(name) for name in (EOS, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX)}
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}")
        return cls(ids[EOS], ids[FIM_PREFIX], ids[FIM_MIDDLE], ids[FIM_SUFFIX])  # type: ignore[arg-type]


def _assemble(cut: FimSplit, prefix: list[int], middle: list[int], suffix: list[int], ids: SpecialIds) -> list[int]:
    """The training example: the served model's prompt layout, then the middle and the end."""
    return [*fim_prompt(prefix, suffix, FimIds(ids.prefix, ids.middle, ids.suffix), cut.mode), *middle, ids.eos]


def encode_documents(
    docs: list[tuple[str, str]], encode_batch: EncodeBatch, ids: SpecialIds, seed: int, rate: float, spm_rate: float
) -> list[tuple[list[int], bool]]:
    """Token ids of (id, text) documents, FIM-transformed or not, each ending in ``<|endoftext|>``.

    All pieces (whole documents, or FIM prefixes/middles/suffixes) go through one
    ``encode_batch`` call, which the Rust tokenizer parallelises. Returns, per document,
    the ids and whether it was FIM-transformed.
    """
    cuts = [fim_split(text, doc_id, seed, rate, spm_rate) for doc_id, text in docs]
    pieces: list[str] = []
    for (_, text), cut in zip(docs, cuts):
        pieces += [text] if cut is None else [cut.prefix, cut.middle, cut.suffix]
    encoded = iter(encode_batch(pieces))
    out = []
    for cut in cuts:
        if cut is None:
            out.append(([*next(encoded), ids.eos], False))
        else:
            prefix, middle, suffix = next(encoded), next(encoded), next(encoded)
            out.append((_assemble(cut, prefix, middle, suffix, ids), True))
    return out


def encode_document(
    text: str, doc_id: str, encode: Encode, ids: SpecialIds, seed: int, rate: float, spm_rate: float
) -> tuple[list[int], bool]:
    """:func:`encode_documents` for one document and a one-text ``encode``."""
    return encode_documents([(doc_id, text)], lambda texts: [encode(t) for t in texts], ids, seed, rate, spm_rate)[0]
