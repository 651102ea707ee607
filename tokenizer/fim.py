"""Fill-in-the-middle: turn a document into prefix/suffix/middle training order.

Following Bavarian et al. (2022) and StarCoder: with probability ``rate`` a document is
split at two uniformly random character positions into (prefix, middle, suffix) and
emitted as

- PSM: ``<fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle``
- SPM: ``<fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle`` (StarCoder's variant)

Every decision is drawn from a generator seeded by (seed, document id), so the result
depends on the document alone, not on partitioning or order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from tokenizer.special import EOS, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

Encode = Callable[[str], list[int]]


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
    def from_vocab(cls, token_to_id: Callable[[str], int | None]) -> "SpecialIds":
        """Look the ids up in a tokenizer's vocabulary."""
        ids = {name: token_to_id(name) for name in (EOS, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX)}
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}")
        return cls(ids[EOS], ids[FIM_PREFIX], ids[FIM_MIDDLE], ids[FIM_SUFFIX])  # type: ignore[arg-type]


def encode_document(
    text: str, doc_id: str, encode: Encode, ids: SpecialIds, seed: int, rate: float, spm_rate: float
) -> tuple[list[int], bool]:
    """Token ids of one document, FIM-transformed or not, ending in ``<|endoftext|>``.

    Returns the ids and whether the document was FIM-transformed.
    """
    cut = fim_split(text, doc_id, seed, rate, spm_rate)
    if cut is None:
        return [*encode(text), ids.eos], False
    prefix, middle, suffix = encode(cut.prefix), encode(cut.middle), encode(cut.suffix)
    if cut.mode == "psm":
        tokens = [ids.prefix, *prefix, ids.suffix, *suffix, ids.middle, *middle, ids.eos]
    else:
        tokens = [ids.prefix, ids.suffix, *suffix, ids.middle, *prefix, *middle, ids.eos]
    return tokens, True
