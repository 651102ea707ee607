"""Stable per-document hashing: held-out and validation splits, and seeded sample order.

The same function exists for Spark columns and for Python strings, so a test (or an
operator) can say which split a document id belongs to without Spark.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Spark only for the column form: the eval stage hashes ids without it
    from pyspark.sql import Column

_SCALE = float(1 << 32)


def stable_fraction(doc_id: str, salt: str) -> float:
    """A number in [0, 1) fixed by (salt, id): the first 32 bits of SHA-256."""
    return int(hashlib.sha256(f"{salt}:{doc_id}".encode()).hexdigest()[:8], 16) / _SCALE


def stable_fraction_col(doc_id: Column, salt: str) -> Column:
    """:func:`stable_fraction` as a Spark column expression (same values)."""
    from pyspark.sql import functions as F

    digest = F.sha2(F.concat(F.lit(f"{salt}:"), doc_id), 256)
    return F.conv(F.substring(digest, 1, 8), 16, 10).cast("double") / F.lit(_SCALE)
