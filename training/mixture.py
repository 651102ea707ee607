"""The training mixture over the shards' streams: the newest snapshot plus a replay share of earlier ones.

Exact arithmetic, not proportions left to Streaming: each stream gets a ``choose`` (samples
per epoch). The newest stream is seen once per epoch; the replay share ``r`` of the epoch is
``new * r / (1 - r)`` samples, split over the earlier streams in proportion to their size
(largest remainder, so the parts add up). A stream asked for more than it holds is repeated.
Light on purpose (pydantic only): the train stage prints it without importing torch.
"""

from __future__ import annotations

import re

from pydantic import Field
from rich.console import Console
from rich.table import Table

from lathe.core.config import Strict
from lathe.core.errors import InputError
from lathe.tokenizer.streams import StreamInfo


class StreamDraw(Strict):
    """One stream's part in training: how many of its samples each epoch draws."""

    name: str
    uri: str
    role: str = Field(description="`new` (this snapshot's documents) or `replay` (an earlier snapshot's).")
    samples: int = Field(description="Train samples the stream holds.")
    choose: int = Field(description="Train samples drawn from it per epoch (Streaming's `choose`).")
    tokens: int = Field(description="Real (non-padding) train tokens drawn from it over the whole run (estimate).")
    has_val: bool = Field(description="Whether the stream has validation samples.")


def _largest_remainder(total: int, weights: list[int]) -> list[int]:
    """Integers proportional to ``weights`` that add up to ``total``."""
    whole = sum(weights)
    if whole == 0:
        return [0] * len(weights)
    exact = [total * w / whole for w in weights]
    parts = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: parts[i] - exact[i])[: total - sum(parts)]:
        parts[i] += 1
    return parts


def run_samples(max_duration: str, global_batch: int, seq_len: int, epoch: int) -> int:
    """Samples a run of ``max_duration`` (Composer time: ba, sp, tok, ep) trains on."""
    match = re.fullmatch(r"\s*(\d+)\s*(ba|sp|tok|ep)\s*", max_duration)
    if not match:
        raise InputError(f"train.max_duration={max_duration!r} is not <int>ba, <int>sp, <int>tok or <int>ep")
    n, unit = int(match[1]), match[2]
    return {"ba": n * global_batch, "sp": n, "tok": -(-n // seq_len), "ep": n * epoch}[unit]


def plan_mixture(
    streams: list[StreamInfo], new: str | None, replay: float, run_samples_of: int | None = None
) -> list[StreamDraw]:
    """Each stream's ``choose`` per epoch, and the tokens it contributes to a run of ``run_samples_of`` samples.

    Without a new stream (no document changed) every earlier stream is drawn once per epoch.
    """
    fresh = next((s for s in streams if s.name == new and s.train_samples), None)
    earlier = [s for s in streams if s is not fresh]
    if fresh is None:
        chooses = [s.train_samples for s in earlier]
    else:
        replayed = round(fresh.train_samples * replay / (1 - replay)) if earlier else 0
        chooses = [fresh.train_samples, *_largest_remainder(replayed, [s.train_samples for s in earlier])]
        earlier = [fresh, *earlier]
    epoch = sum(chooses)
    if epoch == 0:
        raise InputError("the shards hold no training samples; add data or lower shards.val_fraction")
    budget = run_samples_of if run_samples_of is not None else epoch
    draws = []
    for s, choose in zip(earlier, chooses):
        density = s.train_tokens / s.train_samples if s.train_samples else 0.0
        draws.append(
            StreamDraw(
                name=s.name,
                uri=s.uri,
                role="new" if s is fresh else "replay",
                samples=s.train_samples,
                choose=choose,
                tokens=round(budget * choose / epoch * density),
                has_val=s.val_samples > 0,
            )
        )
    return [d for d in draws if d.choose or d.has_val]


def validation_roles(draws: list[StreamDraw]) -> dict[str, list[str]]:
    """Validation splits by evaluator: `val` is the new data's (every stream's when the new one has
    none), `replay_val` the earlier snapshots' (so forgetting old code shows)."""
    new = [d.uri for d in draws if d.role == "new" and d.has_val]
    earlier = [d.uri for d in draws if d.role == "replay" and d.has_val]
    roles = {"val": new or earlier}
    if new and earlier:
        roles["replay_val"] = earlier
    return roles


def print_mixture(draws: list[StreamDraw], seq_len: int, console: Console) -> None:
    """The mixture's arithmetic: per stream, samples held, drawn per epoch, and tokens over the run."""
    epoch = sum(d.choose for d in draws) or 1
    table = Table(title=f"training mixture ({epoch:,} samples x {seq_len} tokens per epoch)")
    for col in ["stream", "role", "samples", "per epoch", "share", "repeat", "tokens in the run"]:
        table.add_column(col, justify="left" if col in ("stream", "role") else "right")
    for d in draws:
        repeat = f"x{d.choose / d.samples:.2f}" if d.samples else "-"
        table.add_row(d.name, d.role, f"{d.samples:,}", f"{d.choose:,}", f"{d.choose / epoch:.1%}", repeat, f"{d.tokens:,}")
    console.print(table)
