"""Fill-in-the-middle: turn a document into prefix/suffix/middle training order.

Following Bavarian et al. (2022) and StarCoder: with probability ``rate`` a document is
split at two uniformly random character positions into (prefix, middle, suffix) and
emitted in the layout of :func:`lathe.core.fim.fim_prompt` (PSM or SPM) followed by the
middle and ``<|endoftext|>``; the served model builds its prompts with the same function.

A FIM example longer than the training context teaches nothing about ending a middle: the
``<fim_middle>`` that opens the middle and the ``<|endoftext|>`` that closes it fall in
different packed samples. So, as the FIM paper's context-level variant does after packing, a
FIM document longer than ``context`` tokens is first cut at line ends into pieces of at most
about ``context`` tokens, and each piece becomes its own FIM example: every prefix, suffix,
middle and end then fit one window.

Every decision is drawn from a generator seeded by (seed, document id), so the result
depends on the document alone, not on partitioning or order.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from lathe.core.fim import SPECIAL_TOKENS_IN_PROMPT, FimIds, fim_prompt
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


def line_pieces(text: str, pieces: int) -> list[str]:
    """``text`` cut into at most ``pieces`` spans of about equal length, each cut moved forward to just after a
    newline (a span of one long line stays whole); the spans joined are ``text``."""
    cuts = [0]
    for p in range(1, pieces):
        newline = text.find("\n", len(text) * p // pieces)
        if newline < 0:
            break
        if cuts[-1] < newline + 1 < len(text):
            cuts.append(newline + 1)
    cuts.append(len(text))
    return [text[a:b] for a, b in zip(cuts, cuts[1:])]


def line_span(text: str, rng: random.Random) -> tuple[int, int]:
    """A middle of whole lines: from the start of a random line, one line, or more with halving odds
    (1: 1/2, 2: 1/4, ...); the prefix ends and the suffix starts at a line boundary."""
    starts = [0, *(i + 1 for i, c in enumerate(text) if c == "\n" and i + 1 < len(text))]
    first = rng.randrange(len(starts))
    last = first + 1
    while last < len(starts) and rng.random() < 0.5:
        last += 1
    return starts[first], starts[last] if last < len(starts) else len(text)


def fim_splits(
    text: str, doc_id: str, seed: int, rate: float, spm_rate: float, pieces: int = 1, line_rate: float = 0.0
) -> list[FimSplit] | None:
    """The FIM cuts of a document, one per piece of :func:`line_pieces`, or None when it stays a plain
    left-to-right document (decided once per document, so ``rate`` is the share of documents). A share
    ``line_rate`` of the pieces gets a middle of whole lines (:func:`line_span`), the rest one between two
    random characters."""
    rng = random.Random(f"fim:{seed}:{doc_id}")
    if rng.random() >= rate:
        return None
    out = []
    for piece in line_pieces(text, pieces):
        if line_rate and rng.random() < line_rate:
            i, j = line_span(piece, rng)
        else:
            i, j = sorted((rng.randint(0, len(piece)), rng.randint(0, len(piece))))
        mode = "spm" if rng.random() < spm_rate else "psm"
        out.append(FimSplit(mode, piece[:i], piece[i:j], piece[j:]))
    return out


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


# Tokens a FIM example adds to its piece's: the three frame tokens, <|endoftext|>, and up to one more
# token at each of the two cuts (a word the cut splits encodes as two tokens).
FRAME_TOKENS = SPECIAL_TOKENS_IN_PROMPT + 1 + 2


def encode_documents(
    docs: list[tuple[str, str]],
    encode_batch: EncodeBatch,
    ids: SpecialIds,
    seed: int,
    rate: float,
    spm_rate: float,
    context: int | None = None,
    line_rate: float = 0.0,
) -> list[tuple[list[int], bool]]:
    """Token ids of (id, text) documents, FIM-transformed or not, each ending in ``<|endoftext|>``.

    A FIM document whose tokens exceed ``context - FRAME_TOKENS`` becomes several FIM examples, one
    per piece of about equal length (:func:`line_pieces`); ``context`` None keeps every document one
    example. The texts go through two ``encode_batch`` calls (whole documents, then FIM pieces), which
    the Rust tokenizer parallelises. Returns, per document, the ids and whether it was FIM-transformed.
    """
    whole = encode_batch([text for _, text in docs])
    room = None if context is None else max(1, context - FRAME_TOKENS)
    cuts = [
        fim_splits(text, doc_id, seed, rate, spm_rate, 1 if room is None else -(-len(tokens) // room), line_rate)
        for (doc_id, text), tokens in zip(docs, whole)
    ]
    encoded = iter(encode_batch([piece for splits in cuts for c in splits or [] for piece in (c.prefix, c.middle, c.suffix)]))
    out = []
    for tokens, splits in zip(whole, cuts):
        if splits is None:
            out.append(([*tokens, ids.eos], False))
        else:
            out.append(([t for c in splits for t in _assemble(c, next(encoded), next(encoded), next(encoded), ids)], True))
    return out


def encode_document(
    text: str,
    doc_id: str,
    encode: Encode,
    ids: SpecialIds,
    seed: int,
    rate: float,
    spm_rate: float,
    context: int | None = None,
) -> tuple[list[int], bool]:
    """:func:`encode_documents` for one document and a one-text ``encode``."""
    return encode_documents([(doc_id, text)], lambda texts: [encode(t) for t in texts], ids, seed, rate, spm_rate, context)[0]
