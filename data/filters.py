"""Per-record filters: pure functions, tested without Spark, mapped over partitions by Spark.

Every filter takes a :class:`Doc` and the data config and returns ``None`` (keep) or the
drop reason (a short snake_case name). Reasons are what the ``dropped/`` parquet and the
manifest count, so they are stable identifiers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lathe.core.registry import Registry
from lathe.data.config import DataConfig, QualityThresholds
from lathe.data.languages import is_lock_file
from lathe.data.parse import parses


@dataclass(frozen=True)
class Doc:
    """The fields of a record that filters look at."""

    content: str | None
    path: str
    lang: str
    size_bytes: int
    ingest_error: str | None = None


Filter = Callable[[Doc, DataConfig], "str | None"]

FILTERS: Registry[Filter] = Registry("filter")


@FILTERS.register("ingest")
def ingest_filter(doc: Doc, cfg: DataConfig) -> str | None:
    """Records the source could not turn into text (binary, undecodable, unreadable)."""
    if doc.ingest_error:
        return doc.ingest_error
    if doc.content is None:
        return "undecodable"
    return None


@FILTERS.register("size")
def size_filter(doc: Doc, cfg: DataConfig) -> str | None:
    """Empty (or whitespace-only) and oversize files."""
    if doc.size_bytes > cfg.max_file_bytes:
        return "oversize"
    if not doc.content or not doc.content.strip():
        return "empty"
    return None


@FILTERS.register("language")
def language_filter(doc: Doc, cfg: DataConfig) -> str | None:
    """Languages outside the configured set (when one is configured)."""
    if cfg.languages is not None and doc.lang not in cfg.languages:
        return "language"
    return None


def _header(content: str, lines: int) -> str:
    # Slicing by characters first keeps this O(header) on huge single-line files.
    return "\n".join(content[: 200 * lines].splitlines()[:lines]).lower()


@FILTERS.register("autogen")
def autogen_filter(doc: Doc, cfg: DataConfig) -> str | None:
    """Lock files, minified bundles and files whose header says they were generated."""
    if doc.lang == "lockfile" or is_lock_file(doc.path):
        return "lock_file"
    assert doc.content is not None
    name = doc.path.lower()
    if name.endswith((".min.js", ".min.css", ".bundle.js")):
        return "minified"
    if doc.lang in ("javascript", "css", "typescript"):
        lines = doc.content.count("\n") + 1
        if len(doc.content) / lines > cfg.autogen.minified_mean_line_length:
            return "minified"
    header = _header(doc.content, cfg.autogen.header_lines)
    if any(marker in header for marker in cfg.autogen.markers):
        return "auto_generated"
    return None


def thresholds_for(lang: str, cfg: DataConfig) -> QualityThresholds:
    """The quality thresholds for a language: defaults with its override applied."""
    q = cfg.quality
    base = QualityThresholds(
        max_line_length=q.max_line_length,
        max_mean_line_length=q.max_mean_line_length,
        min_alnum_fraction=q.min_alnum_fraction,
    )
    override = q.overrides.get(lang)
    if override is None:
        return base
    return base.model_copy(update=override.model_dump(exclude_none=True))


@FILTERS.register("quality")
def quality_filter(doc: Doc, cfg: DataConfig) -> str | None:
    """StarCoder's line-length and alphanumeric-fraction filters."""
    assert doc.content is not None
    t = thresholds_for(doc.lang, cfg)
    lengths = [len(line) for line in doc.content.splitlines()] or [0]
    if max(lengths) > t.max_line_length:
        return "max_line_length"
    if sum(lengths) / len(lengths) > t.max_mean_line_length:
        return "mean_line_length"
    alnum = sum(ch.isalnum() for ch in doc.content)
    if alnum / len(doc.content) < t.min_alnum_fraction:
        return "alnum_fraction"
    return None


@FILTERS.register("parse")
def parse_filter(doc: Doc, cfg: DataConfig) -> str | None:
    """Files in a parse-checked language that do not parse."""
    if doc.lang in cfg.parse.languages:
        assert doc.content is not None
        if not parses(doc.content, doc.lang, cfg.parse.max_error_fraction):
            return "parse_error"
    return None


def drop_reason(doc: Doc, cfg: DataConfig) -> str | None:
    """Run the filters in order (cheapest first); the first that fires names the reason."""
    for name in FILTERS:
        reason = FILTERS.get(name)(doc, cfg)
        if reason is not None:
            return reason
    return None
