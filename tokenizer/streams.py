"""Streams: one MDS dataset per data snapshot, written once and replayed by later trainings.

A retrain's shards stage tokenizes only the documents that no earlier stream holds (by id
and content digest) and writes them as a new stream beside the earlier ones, which are never
rewritten. Each stream keeps a ledger, ``<stream>/docs`` (parquet: id, digest), of the
documents it holds; the next run's delta is the clean data minus the union of the ledgers.

Earlier streams are kept only while their token ids and sample shape still mean the same:
the same vocabulary, sequence length, FIM settings and stage version. Otherwise (or on
``--force``) the stage starts over with one stream holding every document. A changed file's
old version stays in the stream that first held it (replayed as old code); a file that must
disappear from every stream (a takedown) needs that full rebuild.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from pydantic import Field
from rich.console import Console
from rich.table import Table

from lathe.core.config import Strict
from lathe.core.stage import Upstream

LEDGER = "docs"  # <stream>/docs: parquet (id, digest) of the documents a stream holds
# <stream>/held_out: parquet (id, lang, path, content) of the stream's validation documents as written, for the
# evaluations that need text and its language (bits per byte and line completion per language)
HELD_OUT = "held_out"
# Shards settings that change what a stream's samples are: earlier streams made with others are not reused.
SAMPLE_SETTINGS = ("seq_len", "fim_rate", "fim_spm_rate", "fim_line_rate", "fim_context", "seed")


class StreamInfo(Strict):
    """One stream as written: where it is and what it holds."""

    name: str = Field(description="Folder name under the stream root: <index>-<shards fingerprint>.")
    uri: str = Field(description="The stream's root (train/, val/, docs/): a local path or an object-store URI.")
    snapshot: str | None = Field(None, description="The data snapshot whose new documents it holds.")
    docs: int = Field(0, description="Documents (train + val).")
    train_samples: int = 0
    train_tokens: int = Field(0, description="Real (non-padding) tokens of the train split.")
    val_samples: int = 0
    val_tokens: int = 0


def stream_name(index: int, fingerprint: str) -> str:
    """Names sort in the order streams were written; the fingerprint keeps reruns from colliding."""
    return f"{index:04d}-{fingerprint[:8]}"


def previous_streams(
    previous: Upstream | None, vocabulary: str, config: dict[str, Any], version: str
) -> tuple[list[StreamInfo], str]:
    """The earlier streams a new run may build on, and why none are (empty string when some are)."""
    if previous is None:
        return [], "no earlier shards"
    details = previous.details
    if previous.manifest.get("version") != version:
        return [], "the shards stage changed"
    if details.get("vocabulary") != vocabulary:
        return [], "a new vocabulary"
    old = previous.manifest.get("config") or {}
    changed = [k for k in SAMPLE_SETTINGS if old.get(k) != config.get(k)]
    if changed:
        return [], f"shards.{changed[0]} changed"
    root = old.get("output") or str(previous.dir / "mds")
    if (config.get("output") or "") != (old.get("output") or "") and "://" in root:
        return [], "shards.output moved off an object store"
    streams = [StreamInfo.model_validate({**s, "uri": f"{root.rstrip('/')}/{s['name']}"}) for s in details.get("streams", [])]
    return streams, "" if streams else "no earlier streams"


def carry_over(streams: list[StreamInfo], root: str) -> list[StreamInfo]:
    """The earlier streams under this run's root: local ones are hard-linked (no bytes copied, and
    the previous run keeps its files until this one succeeds); a shared root needs nothing."""
    moved = []
    for s in streams:
        dest = f"{root.rstrip('/')}/{s.name}"
        if s.uri != dest:
            shutil.copytree(s.uri, dest, copy_function=_link_or_copy)
        moved.append(s.model_copy(update={"uri": dest}))
    return moved


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def prune_root(root: str, keep: list[str]) -> None:
    """Remove what a local stream root holds besides the streams kept (a rebuild's stale streams)."""
    if "://" in root:
        return  # object stores keep old streams; the manifest names the live ones
    for entry in Path(root).iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def release_filelocks(dataset: Any) -> None:
    """Remove the lock files a StreamingDataset made in the temp folder (``<prefix>_cache_filelock``,
    ``<prefix>_barrier_filelock``): Streaming leaves them behind, a few per run, forever. Call it
    when every rank is done with the dataset (unlinking a file another process still locks is harmless)."""
    barrier = getattr(dataset, "_shared_barrier", None)
    for path in (getattr(dataset, "_cache_filelock_path", None), getattr(barrier, "filelock_path", None)):
        if path:
            Path(path).unlink(missing_ok=True)


def print_streams(streams: list[StreamInfo], new: str | None, console: Console) -> None:
    """The streams the shards stage holds now; the new one marked."""
    table = Table(title="MDS streams (one per data snapshot; earlier ones are replayed, never rewritten)")
    for col in ["stream", "snapshot", "docs", "train samples", "train tokens", "val tokens"]:
        table.add_column(col, justify="left" if col in ("stream", "snapshot") else "right")
    for s in streams:
        mark = " (new)" if s.name == new else ""
        table.add_row(
            s.name + mark,
            (s.snapshot or "-")[:16],
            f"{s.docs:,}",
            f"{s.train_samples:,}",
            f"{s.train_tokens:,}",
            f"{s.val_tokens:,}",
        )
    console.print(table)
