"""Streaming dataloaders over the MDS shards, with sample indices kept for replay."""

from __future__ import annotations

import fcntl
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from composer.core import DataSpec
from composer.utils import dist
from streaming import Stream, StreamingDataLoader, StreamingDataset
from streaming.base.format.base.reader import JointReader

from lathe.core.errors import InputError


class IndexedStreamingDataset(StreamingDataset):
    """A StreamingDataset whose samples carry their global index (for loss-spike replay)."""

    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, Any]:
        sample = super().get_item(sample_id, retry=retry)
        return {"tokens": sample["tokens"], "sample_idx": sample_id}

    def locate(self, sample_id: int) -> tuple[int, str, int]:
        """(stream, shard file, position in shard) of a global sample index."""
        shard_id, offset = self.spanner[sample_id]
        shard = self.shards[shard_id]
        assert isinstance(shard, JointReader)  # MDS shards (what lathe writes) are read whole, not split
        return int(self.stream_per_shard[shard_id]), shard.raw_data.basename, int(offset)


def check_split(uri: str) -> dict[str, Any]:
    """Fail before any compute if a local split's index or shards are missing or corrupt."""
    if "://" in uri:
        return {}  # object stores are checked by streaming on first access
    index = Path(uri) / "index.json"
    if not index.is_file():
        raise InputError(f"MDS index {index} not found; run `lathe run shards` first")
    try:
        meta = json.loads(index.read_text())
        shards = meta["shards"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"MDS index {index} is corrupt ({exc}); rerun `lathe run shards --force`") from None
    for shard in shards:
        zip_info = shard.get("zip_data") or shard["raw_data"]
        path = Path(uri) / zip_info["basename"]
        if not path.is_file() or path.stat().st_size != zip_info["bytes"]:
            raise InputError(f"MDS shard {path} is missing or truncated; rerun `lathe run shards --force`")
    return meta


def collate(pad_id: int):
    """Samples -> {input_ids, labels (pad = -100), sample_idx}."""

    def fn(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(np.stack([s["tokens"] for s in samples]).astype(np.int64))
        labels = ids.masked_fill(ids == pad_id, -100)
        return {"input_ids": ids, "labels": labels, "sample_idx": torch.tensor([s["sample_idx"] for s in samples])}

    return fn


def tokens_in_batch(batch: dict[str, torch.Tensor]) -> int:
    """Real (non-pad) tokens: what SpeedMonitor's tokens/s counts."""
    return int((batch["labels"] != -100).sum())


def streams_of(splits: list[tuple[str, int | None]], cache: Path) -> list[Stream]:
    """Streaming streams over split roots, each with its draw per epoch (None: every sample once);
    a remote split is cached under ``cache``."""
    from streaming import Stream

    out = []
    for i, (uri, choose) in enumerate(splits):
        remote, local = (uri, str(cache / f"{i:03d}")) if "://" in uri else (None, uri)
        out.append(Stream(remote=remote, local=local, choose=choose))
    return out


@contextmanager
def registering_streams() -> Iterator[None]:
    """Build StreamingDatasets inside this: one job at a time on this host.

    Streaming gives each dataset a shared-memory prefix by scanning for the lowest free one and then
    creating it; two jobs starting at once on one host (a sweep's candidates) can pick the same one,
    and the later crashes (``FileExistsError: '/000003_locals'``). Each job's local leader holds a
    host-wide lock while its ranks build their datasets; the other ranks wait at a barrier, not on the
    lock, so the datasets' own barriers between them cannot deadlock.
    """
    shm = Path("/dev/shm")
    path = (shm if shm.is_dir() else Path(tempfile.gettempdir())) / "lathe-streaming-prefix.lock"
    leader = dist.get_local_rank() == 0
    handle = open(path, "a") if leader else None
    try:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        if dist.is_initialized():
            dist.barrier()  # every rank scans for a prefix only once its leader holds the lock
        yield
        if dist.is_initialized():
            dist.barrier()  # and the lock is released only once every rank's datasets exist
    finally:
        if handle is not None:
            handle.close()  # closing releases the flock


def build_dataloader(
    splits: list[tuple[str, int | None]],
    cache: Path,
    batch_size: int,
    shuffle: bool,
    seed: int,
    pad_id: int,
    num_workers: int,
    canonical_nodes: int | None = None,
) -> tuple[DataSpec, IndexedStreamingDataset]:
    """A DataSpec over split roots mixed by their draws; each rank reads its own part of the stream.

    ``canonical_nodes`` fixes Streaming's sample order whatever the number of physical nodes (None:
    Streaming's default, the first run's node count).
    """
    dataset = IndexedStreamingDataset(
        streams=streams_of(splits, cache),
        shuffle=shuffle,
        shuffle_seed=seed,
        batch_size=batch_size,
        num_canonical_nodes=canonical_nodes,
    )
    loader = StreamingDataLoader(
        dataset, batch_size=batch_size, collate_fn=collate(pad_id), num_workers=num_workers, drop_last=shuffle
    )
    return DataSpec(loader, get_num_tokens_in_batch=tokens_in_batch), dataset
