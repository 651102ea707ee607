"""A MosaicML Streaming (MDS) writer for fixed-shape token samples, without importing `streaming`.

``streaming``'s ``__init__`` imports torch, transformers and sklearn: 5-6 s in every Spark
Python worker and again in the driver for ``merge_index``. The shards job writes one column
of one fixed shape, so it writes the format itself: the shard files and ``index.json`` are
byte-identical to ``streaming.MDSWriter``'s (a test compares them) and ``StreamingDataset``
reads them as its own. Only an object-store output imports ``streaming``, for its uploader.

Shard layout (MDS version 2): ``uint32 samples | uint32 offsets[samples + 1] | config JSON |
samples``, each offset absolute in the file; the file is then compressed whole.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lathe.core.errors import InputError

INDEX = "index.json"
_OFFSET_BYTES = 4  # each sample costs its uint32 offset, as streaming counts it against size_limit


def _zstd(level: int) -> Callable[[bytes], bytes]:
    import zstd  # the binding streaming itself uses, so the frames match

    return lambda data: zstd.compress(data, level)


# name -> (file extension, default level, levels, compressor at a level); streaming's defaults.
_CODECS: dict[str, tuple[str, int, range, Callable[[int], Callable[[bytes], bytes]]]] = {
    "zstd": ("zstd", 3, range(1, 23), _zstd),
    "gz": ("gz", 9, range(0, 10), lambda level: lambda data: gzip.compress(data, level, mtime=0)),
    "bz2": ("bz2", 9, range(1, 10), lambda level: lambda data: bz2.compress(data, level)),
}


@dataclass(frozen=True)
class Codec:
    """A shard compression as streaming names it (``zstd``, ``zstd:7``, ``gz``, ``bz2``) or none."""

    spec: str | None
    extension: str | None = None
    compress: Callable[[bytes], bytes] | None = None

    @classmethod
    def parse(cls, spec: str | None) -> Codec:
        """Validate a compression setting; one clear error for anything else."""
        if not spec:
            return cls(None)
        name, _, level_text = spec.partition(":")
        if name not in _CODECS or (level_text and not level_text.isdigit()):
            raise InputError(
                f"shards.compression {spec!r} is not supported; use one of {sorted(_CODECS)} (optionally :level) or null"
            )
        extension, default, levels, make = _CODECS[name]
        level = int(level_text) if level_text else default
        if level not in levels:
            raise InputError(f"shards.compression {spec!r}: {name} levels are {levels.start}..{levels.stop - 1}")
        return cls(spec, extension, make(level))


def ndarray_encoding(dtype: np.dtype, length: int) -> str:
    """The MDS column encoding of a fixed-length 1-D array."""
    return f"ndarray:{np.dtype(dtype).name}:{length}"


@dataclass
class ShardWriter:
    """Writes one MDS dataset folder of a single fixed-shape ndarray column.

    ``write`` takes samples in order; a shard is flushed when the next sample would pass
    ``size_limit`` (counted as streaming counts it); ``finish`` writes the folder's
    ``index.json`` and returns its shard entries.
    """

    local: str
    column: str
    dtype: np.dtype
    length: int
    codec: Codec
    size_limit: int
    shards: list[dict[str, Any]] = field(default_factory=list)
    _samples: list[bytes] = field(default_factory=list)
    _size: int = 0

    def __post_init__(self) -> None:
        self.dtype = np.dtype(self.dtype)
        self.sample_bytes = self.length * self.dtype.itemsize
        self.config = {
            "column_encodings": [ndarray_encoding(self.dtype, self.length)],
            "column_names": [self.column],
            "column_sizes": [self.sample_bytes],
            "compression": self.codec.spec,
            "format": "mds",
            "hashes": [],
            "size_limit": self.size_limit,
            "version": 2,
        }
        self.config_bytes = json.dumps(self.config, sort_keys=True).encode("utf-8")
        os.makedirs(self.local, exist_ok=True)
        self._size = self._empty_size()

    def _empty_size(self) -> int:
        return 4 + 4 + len(self.config_bytes)  # sample count + the extra offset + config

    def write(self, sample: np.ndarray) -> None:
        """Append one sample (converted to the column's dtype; its length must match)."""
        data = np.ascontiguousarray(sample, dtype=self.dtype).tobytes()
        if len(data) != self.sample_bytes:
            raise ValueError(f"sample of {len(data)} bytes, column {self.column} holds {self.sample_bytes}")
        if self.size_limit < self._size + len(data) + _OFFSET_BYTES:
            self._flush()
        self._samples.append(data)
        self._size += len(data) + _OFFSET_BYTES

    def _flush(self) -> None:
        n = len(self._samples)
        if not n:
            return
        head = 4 + 4 * (n + 1) + len(self.config_bytes)
        offsets = (np.arange(n + 1, dtype=np.uint64) * self.sample_bytes + head).astype(np.uint32)
        raw = np.uint32(n).tobytes() + offsets.tobytes() + self.config_bytes + b"".join(self._samples)
        raw_name = f"shard.{len(self.shards):05}.mds"
        entry: dict[str, Any] = {
            "samples": n,
            "raw_data": {"basename": raw_name, "bytes": len(raw), "hashes": {}},
            "zip_data": None,
        }
        data, name = raw, raw_name
        if self.codec.compress is not None:
            data, name = self.codec.compress(raw), f"{raw_name}.{self.codec.extension}"
            entry["zip_data"] = {"basename": name, "bytes": len(data), "hashes": {}}
        with open(os.path.join(self.local, name), "wb") as out:
            out.write(data)
        entry.update(self.config)
        self.shards.append(entry)
        self._samples, self._size = [], self._empty_size()

    def finish(self) -> list[dict[str, Any]]:
        """Flush the last shard, write ``index.json``; the shard entries, in order."""
        self._flush()
        write_index(self.shards, os.path.join(self.local, INDEX))
        return self.shards


def _unzstd(data: bytes) -> bytes:
    import zstd

    return bytes(zstd.decompress(data))


_DECOMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "zstd": _unzstd,
    "gz": gzip.decompress,
    "bz2": bz2.decompress,
}


def read_samples(local: str) -> Iterator[np.ndarray]:
    """Every sample of a local MDS folder this writer wrote (one fixed-shape ndarray column), in index order.

    The writer's inverse, without ``streaming`` (no shared memory, no locks, no torch import): for reading a
    split back outside training, e.g. the eval stage's held-out documents.
    """
    with open(os.path.join(local, INDEX)) as f:
        shards = json.load(f)["shards"]
    for entry in shards:
        (encoding,) = entry["column_encodings"]
        _, dtype, length = encoding.split(":")
        raw_path = os.path.join(local, entry["raw_data"]["basename"])
        if os.path.exists(raw_path):  # streaming may have left the decompressed file beside the zipped one
            with open(raw_path, "rb") as f:
                raw = f.read()
        else:
            zipped = entry["zip_data"]
            with open(os.path.join(local, zipped["basename"]), "rb") as f:
                raw = _DECOMPRESS[entry["compression"].partition(":")[0]](f.read())
        n = int(np.frombuffer(raw, np.uint32, 1)[0])
        offsets = np.frombuffer(raw, np.uint32, n + 1, offset=4)
        for i in range(n):
            sample = np.frombuffer(raw[offsets[i] : offsets[i + 1]], dtype=np.dtype(dtype))
            if sample.size != int(length):
                raise InputError(f"{local}: shard {entry['raw_data']['basename']} sample {i} is not {encoding}")
            yield sample


def write_index(shards: list[dict[str, Any]], path: str) -> None:
    """An MDS ``index.json`` over ``shards`` (entries whose basenames are relative to its folder)."""
    with open(path, "w") as out:
        json.dump({"shards": shards, "version": 2}, out, sort_keys=True)


def under(folder: str, shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries with their file names prefixed by ``folder/``: how a parent index lists a sub-folder's shards."""
    moved = []
    for entry in shards:
        entry = dict(entry)
        for key in ("raw_data", "zip_data"):
            if entry.get(key):
                entry[key] = {**entry[key], "basename": f"{folder}/{entry[key]['basename']}"}
        moved.append(entry)
    return moved


def upload_folder(local: str, remote: str) -> None:
    """Copy a finished local MDS folder to an object store (the one path that imports ``streaming``)."""
    from streaming.base.storage.upload import CloudUploader

    uploader = CloudUploader.get((local, remote), keep_local=False, exist_ok=True)
    for name in sorted(os.listdir(local), key=lambda n: n == INDEX):  # the index last: readers look for it
        uploader.upload_file(name)
