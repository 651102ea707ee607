"""Source snapshots: what each source holds now, stated cheaply before any Spark work.

The data stage observes the snapshot (``Stage.observe``), so it is part of the stage's
fingerprint: unchanged sources skip, changed ones run. Each kind says it in its own terms:

- ``tree``: per directory, the git HEAD and the tree of that directory plus the dirty state
  (every changed or untracked file with its size and modification time) in a git work
  tree, else a digest of the (path, size, mtime) listing of the files ingest would read.
- ``parquet``: the file listing with sizes and modification times (object stores: ETags).
- ``stack``: the dataset revision (a local copy: its file listing).
- ``embedded``: the sampled file list.

A scheduled run passes its data interval's end (``run.as_of``): the snapshot is then what the
sources held at that time, so a backfill of past intervals sees each interval's state.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from lathe.core.errors import InputError
from lathe.core.registry import Registry
from lathe.data.config import EmbeddedSourceConfig, ParquetSourceConfig, SourceConfig, StackSourceConfig, TreeSourceConfig
from lathe.data.sources import (
    commit_as_of,
    expand_parquet_paths,
    git_toplevel,
    in_repo,
    modified_by,
    sample_embedded,
    subtree_at,
    tree_roots,
    walk_code_files,
)

Snapshot = dict[str, Any]
SNAPSHOTS: Registry[Callable[[Any, datetime | None], Snapshot]] = Registry("source kind")


def digest(items: Iterable[Any]) -> str:
    """A short stable hash of JSON-able items."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None  # deleted (a dirty entry) or unreadable
    return st.st_size, st.st_mtime_ns


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise InputError(f"git {' '.join(args)} failed in {root}: {done.stderr.strip()[:200]}")
    return done.stdout


def git_state(root: Path) -> Snapshot:
    """HEAD, the tree of ``root`` at HEAD, and a digest of its uncommitted changes (with stats)."""
    head = _git(root, "rev-parse", "HEAD").strip() if _git(root, "rev-list", "-n1", "--all").strip() else ""
    prefix = _git(root, "rev-parse", "--show-prefix").strip()
    # the directory's tree at HEAD; a directory not committed yet has none (its files are all in `dirty`)
    at_head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "-q", "--verify", f"HEAD:{prefix}"], capture_output=True, text=True
    )
    tree = at_head.stdout.strip() if head and at_head.returncode == 0 else ""
    entries = _git(root, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--", ".").split("\0")
    top = Path(git_toplevel(root) or root)
    # Each entry is "XY path"; a rename is followed by its old path as a separate entry (no status).
    dirty = [(e[:2], e[3:], _stat(top / e[3:])) for e in entries if len(e) > 3 and e[2] == " "]
    return {"head": head, "tree": tree, "dirty": digest(dirty) if dirty else ""}


@SNAPSHOTS.register("tree")
def tree_snapshot(cfg: TreeSourceConfig, as_of: datetime | None = None) -> Snapshot:
    """Per directory: git state in a work tree, else the listing digest; with ``as_of``, what
    ingest reads then (the last commit by that time; the files modified by then)."""
    repos = []
    for root, repo in tree_roots(cfg):
        if git_toplevel(root) and as_of is not None:
            commit = commit_as_of(root, as_of)
            repos.append({"path": str(root), "repo": repo, "head": commit, "tree": subtree_at(root, commit), "dirty": ""})
        elif git_toplevel(root):
            repos.append({"path": str(root), "repo": repo, **git_state(root)})
        else:
            listing = (
                (f.path, _stat(Path(f.abs_path)))
                for f in walk_code_files(root, f"{repo}/", in_repo(repo))
                if modified_by(f.abs_path, as_of)
            )
            repos.append({"path": str(root), "repo": repo, "listing": digest(listing)})
    return {"kind": "tree", "repos": repos}


@SNAPSHOTS.register("parquet")
def parquet_snapshot(cfg: ParquetSourceConfig, as_of: datetime | None = None) -> Snapshot:
    """Every parquet file (written by ``as_of``) with its size and mtime (local) or ETag (object stores)."""
    files: list[tuple[str, str | tuple[int, int] | None]] = []
    for f in expand_parquet_paths(cfg.paths, as_of):
        if "://" in f and not f.startswith("file://"):
            files.append((f, _remote_version(f)))
        else:
            files.append((f, _stat(Path(f.removeprefix("file://")))))
    return {"kind": "parquet", "name": cfg.name, "files": digest(files), "count": len(files)}


def _remote_version(uri: str) -> str:
    """An object's version as its store states it (ETag, else size and mtime)."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
        items = [fs.info(path)] if not fs.isdir(path) else sorted(fs.ls(path, detail=True), key=lambda i: i["name"])
    except (ImportError, ValueError, OSError) as exc:
        raise InputError(
            f"cannot list {uri} for its snapshot ({exc}); install its fsspec backend (s3fs, gcsfs) and check access"
        ) from None
    return digest(
        (
            i.get("name"),
            i.get("ETag") or i.get("etag") or i.get("md5Hash"),
            i.get("size"),
            str(i.get("mtime") or i.get("LastModified")),
        )
        for i in items
    )


@SNAPSHOTS.register("stack")
def stack_snapshot(cfg: StackSourceConfig, as_of: datetime | None = None) -> Snapshot:
    """The dataset revision: pinned in the config, a local copy's listing, or the Hub's current commit."""
    base = {"kind": "stack", "dataset": cfg.dataset, "languages": cfg.languages, "max_rows": cfg.max_rows_per_language}
    local = Path(cfg.dataset)
    if local.is_dir():
        listing = sorted((str(p.relative_to(local)), _stat(p)) for p in local.rglob("*") if p.is_file())
        return {**base, "revision": "local:" + digest(listing)}
    if cfg.revision:
        return {**base, "revision": cfg.revision}
    try:
        from huggingface_hub import HfApi

        sha = HfApi().dataset_info(cfg.dataset, token=os.environ.get("HF_TOKEN")).sha
    except Exception as exc:  # the hub client raises many types; all mean "could not ask"
        raise InputError(
            f"cannot read the current revision of {cfg.dataset} ({type(exc).__name__}); "
            "pin data.sources[].revision to a commit or tag"
        ) from None
    return {**base, "revision": sha}


@SNAPSHOTS.register("embedded")
def embedded_snapshot(cfg: EmbeddedSourceConfig, as_of: datetime | None = None) -> Snapshot:
    """The sampled files with their sizes (the sample is what ingest reads)."""
    files = sample_embedded(cfg)
    return {"kind": "embedded", "files": digest((f.path, f.size_bytes) for f in files), "count": len(files)}


def snapshot_sources(sources: list[SourceConfig], as_of: datetime | None = None) -> tuple[str, list[Snapshot]]:
    """The snapshot id of all sources together (as of ``as_of``, when given), and each source's snapshot."""
    snapshots = [SNAPSHOTS.get(s.kind)(s, as_of) for s in sources]
    return digest(snapshots), snapshots
