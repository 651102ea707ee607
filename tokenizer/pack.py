"""Packing: concatenate documents' tokens and cut them into fixed-length samples."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Packer:
    """Streams documents in, fixed ``seq_len`` samples out; :meth:`finish` pads the tail.

    Documents are concatenated (each already ends in ``<|endoftext|>``), as GPT-style
    pre-training does: no token is dropped, and only the last sample carries padding.
    """

    seq_len: int
    pad_id: int
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.uint16))
    _buffer: list[int] = field(default_factory=list)
    tokens: int = 0  # real tokens taken in
    padding: int = 0  # pad tokens added by finish()

    def add(self, ids: list[int]) -> Iterator[np.ndarray]:
        """Take one document's ids; yield every sample that is now full."""
        self._buffer.extend(ids)
        self.tokens += len(ids)
        full = len(self._buffer) // self.seq_len * self.seq_len
        for start in range(0, full, self.seq_len):
            yield np.asarray(self._buffer[start : start + self.seq_len], dtype=self.dtype)
        del self._buffer[:full]

    def finish(self) -> Iterator[np.ndarray]:
        """Yield the last, padded sample (if any tokens are left)."""
        if self._buffer:
            self.padding = self.seq_len - len(self._buffer)
            yield np.asarray(self._buffer + [self.pad_id] * self.padding, dtype=self.dtype)
            self._buffer = []


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every id (uint16 up to 65,536 tokens)."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)
