"""Special tokens with fixed ids: the contract between tokenizer, shards, model and server."""

from __future__ import annotations

# the FIM tokens are named where the FIM layout is defined (shared with the served model)
from lathe.core.fim import FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX

EOS = "<|endoftext|>"
PAD = "<|pad|>"
FILENAME = "<filename>"
REPONAME = "<reponame>"

# Order is id order: the BPE trainer assigns ids 0..n-1 to these before any merge.
BASE_SPECIAL_TOKENS = [EOS, PAD, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, FILENAME, REPONAME]


def sentinel(i: int) -> str:
    """The i-th reserved sentinel (T5/UL2 style), kept free for later objectives."""
    return f"<|extra_id_{i}|>"


def special_tokens(reserved_sentinels: int) -> list[str]:
    """All special tokens in id order."""
    return [*BASE_SPECIAL_TOKENS, *(sentinel(i) for i in range(reserved_sentinels))]
