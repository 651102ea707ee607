"""Post-training records from files: supervised pairs and preference triples, read and checked.

Supervised pairs follow llm-foundry's finetuning convention (string fields ``prompt`` and
``response``); preferences add a second answer (``prompt``, ``chosen``, ``rejected``), as
DPO trainers and the serving gateway's acceptance export write them. Either comes as
JSONL, a parquet file or a directory of parquet files (as Spark writes them), on local
disk or in an object store (through fsspec). Every record is kept or dropped with a
counted reason:

- ``not_json``: a JSONL line that does not parse, or parses to something other than an object;
- ``missing_field``: a field absent, null or not a string (or a ``suffix`` that is not a string);
- ``empty_response``: an answer (every field but ``prompt``) empty or only whitespace: nothing to learn.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lathe.core.errors import InputError

SFT_FIELDS = ("prompt", "response")
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")
# Optional: the code after the cursor of a fill-in-the-middle request (the gateway's export has it);
# absent or null reads as "" (a left-to-right prompt).
SUFFIX = "suffix"
FORMATS = (".jsonl", ".parquet")


def check_record(record: Any, fields: tuple[str, ...] = SFT_FIELDS) -> str | None:
    """Why a decoded record cannot be used (a reason above), or None if it can."""
    if not isinstance(record, dict):
        return "not_json"
    if any(not isinstance(record.get(f), str) for f in fields) or not isinstance(record.get(SUFFIX) or "", str):
        return "missing_field"
    if any(not record[f].strip() for f in fields if f != "prompt"):
        return "empty_response"
    return None


def _locate(path: str | Path) -> tuple[Any, str, bool]:
    """(filesystem, path in it, is a directory) for a local path or an fsspec URL (s3://, gs://, ...)."""
    import fsspec

    try:
        fs, inner = fsspec.core.url_to_fs(str(path))
        if not fs.exists(inner):
            raise InputError(f"records file {path} not found; check the path")
        return fs, inner, fs.isdir(inner)
    except (ImportError, ValueError, OSError) as exc:
        raise InputError(
            f"cannot open records file {path} ({exc}); install its fsspec backend (s3fs, gcsfs) and check access"
        ) from None


def read_records(path: str | Path, fields: tuple[str, ...] = SFT_FIELDS) -> tuple[list[dict[str, str]], dict[str, int]]:
    """The valid records (``fields`` and ``suffix``) of a JSONL file, a parquet file or a directory of parquet
    files, in file order, and the drop counts by reason.

    Blank JSONL lines are skipped, not counted: they hold no record. A parquet input without
    one of ``fields`` as a column is an error, not a count per row.
    """
    fs, inner, is_dir = _locate(path)
    suffix = Path(inner).suffix
    if not is_dir and suffix not in FORMATS:
        raise InputError(
            f"records file {path} has an unknown format; use JSONL (.jsonl) or parquet (.parquet, or a directory of them)"
        )
    if is_dir or suffix == ".parquet":
        records: Iterable[Any] = _parquet_records(fs, inner, path, fields)
    else:
        records = _jsonl_records(fs, inner)
    rows: list[dict[str, str]] = []
    drops: Counter[str] = Counter()
    for record in records:
        reason = check_record(record, fields)
        if reason is None:
            rows.append({**{f: record[f] for f in fields}, SUFFIX: record.get(SUFFIX) or ""})
        else:
            drops[reason] += 1
    return rows, dict(sorted(drops.items()))


def _jsonl_records(fs: Any, inner: str) -> Iterable[Any]:
    """Each non-blank line decoded; a line that does not parse (or is not UTF-8) becomes None (``not_json``)."""
    with fs.open(inner, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                yield json.loads(line.decode("utf-8"))
            except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
                yield None


def _parquet_records(fs: Any, inner: str, path: str | Path, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(inner, filesystem=fs)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read parquet records {path}: {first}; replace or remove the file") from None
    missing = [f for f in fields if f not in table.column_names]
    if missing:
        raise InputError(
            f"parquet records {path} lack columns {missing} (they have {table.column_names}); write {', '.join(fields)} columns"
        )
    return table.select([*fields, *([SUFFIX] if SUFFIX in table.column_names else [])]).to_pylist()
