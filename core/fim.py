"""Fill-in-the-middle layout: the one function that orders prefix and suffix around the FIM tokens.

The shards stage builds training examples with it (``prompt + middle + <|endoftext|>``) and the
served model builds editor prompts with it (``prompt``, then the model writes the middle), so
serving asks in exactly the order training taught. Following Bavarian et al. (2022) and StarCoder:

- PSM: ``<fim_prefix> prefix <fim_suffix> suffix <fim_middle>`` (then the middle)
- SPM: ``<fim_prefix> <fim_suffix> suffix <fim_middle> prefix`` (then the middle)

Standard library only: the file is copied into the Triton model repository as ``lathe_fim.py``
beside the served model, where lathe is not installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FIM_PREFIX = "<fim_prefix>"
FIM_MIDDLE = "<fim_middle>"
FIM_SUFFIX = "<fim_suffix>"
FIM_PAD = "<fim_pad>"
SPECIAL_TOKENS_IN_PROMPT = 3  # <fim_prefix>, <fim_suffix>, <fim_middle>


@dataclass(frozen=True)
class FimIds:
    """The vocabulary ids of the three tokens that frame a FIM prompt."""

    prefix: int
    middle: int
    suffix: int


def fim_prompt(prefix: Sequence[int], suffix: Sequence[int], ids: FimIds, mode: str = "psm") -> list[int]:
    """Token ids of a FIM prompt in ``mode`` ("psm" or "spm"); the middle follows it."""
    if mode == "psm":
        return [ids.prefix, *prefix, ids.suffix, *suffix, ids.middle]
    if mode == "spm":
        return [ids.prefix, ids.suffix, *suffix, ids.middle, *prefix]
    raise ValueError(f"FIM mode {mode!r} is not one of psm, spm")


def fit_context(prefix: Sequence[int], suffix: Sequence[int], room: int) -> tuple[list[int], list[int]]:
    """Cut ``prefix`` from the left and ``suffix`` from the right so that the FIM prompt is at most ``room`` tokens.

    The code nearest the cursor is what matters: the prefix keeps its end, the suffix its start.
    When both must be cut, the suffix keeps a quarter of the room (or whatever the prefix leaves
    over) and the prefix the rest, as editors weigh the code before the cursor more. Only the
    text's tokens are cut; the frame's special tokens are added around what is kept.
    """
    room -= SPECIAL_TOKENS_IN_PROMPT
    if room < 1:
        raise ValueError(
            f"a FIM prompt needs room for at least {SPECIAL_TOKENS_IN_PROMPT + 1} tokens, got {room + SPECIAL_TOKENS_IN_PROMPT}"
        )
    if len(prefix) + len(suffix) <= room:
        return list(prefix), list(suffix)
    keep_suffix = min(len(suffix), max(room // 4, room - len(prefix)))
    keep_prefix = room - keep_suffix
    return list(prefix[len(prefix) - keep_prefix :]), list(suffix[:keep_suffix])
