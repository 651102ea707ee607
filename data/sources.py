"""Sources: where raw code comes from, each turned into the canonical schema.

A source is registered by its config ``kind`` and builds a Spark DataFrame with
:data:`CANONICAL_COLUMNS` plus ``ingest_error`` (why a file could not become text, or
null). Files are listed on the driver and read by executors, so on a cluster the
``tree`` paths must be on a filesystem every executor mounts.
"""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lathe.core.errors import InputError
from lathe.core.registry import Registry
from lathe.data.config import (
    EmbeddedSourceConfig,
    ParquetSourceConfig,
    StackSourceConfig,
    TreeSourceConfig,
)
from lathe.data.languages import canonical_language, language_of

# The canonical schema every source produces and `kept/` holds.
CANONICAL_FIELDS = [
    T.StructField("id", T.StringType()),
    T.StructField("content", T.StringType()),
    T.StructField("lang", T.StringType()),
    T.StructField("path", T.StringType()),
    T.StructField("repo", T.StringType()),
    T.StructField("license", T.StringType()),
    T.StructField("size_bytes", T.LongType()),
    T.StructField("source", T.StringType()),
]
CANONICAL_COLUMNS = [f.name for f in CANONICAL_FIELDS]
# What ingest writes: canonical + why a file could not become text (null if it could).
INGEST_SCHEMA = T.StructType([*CANONICAL_FIELDS, T.StructField("ingest_error", T.StringType())])

# Bytes sniffed for NUL to call a file binary (git uses the same heuristic on 8000 bytes).
BINARY_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class ListedFile:
    """A file found on disk: where it is and how it is named in the dataset."""

    abs_path: str
    path: str
    repo: str
    size_bytes: int


def read_text_file(abs_path: str, size_bytes: int, max_bytes: int) -> tuple[str | None, str | None]:
    """Read a source file as UTF-8 text: ``(content, None)`` or ``(None, reason)``.

    Oversize files are not read at all (a 2 GB data file must not reach memory).
    """
    if size_bytes > max_bytes:
        return None, "oversize"
    try:
        raw = Path(abs_path).read_bytes()
    except OSError:
        return None, "unreadable"
    if b"\x00" in raw[:BINARY_SNIFF_BYTES]:
        return None, "binary"
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, "undecodable"


_SKIP_DIRS = frozenset({"__pycache__", ".git", "node_modules"})


def in_repo(repo: str) -> Callable[[str], str]:
    """A ``repo_of`` for :func:`walk_code_files` that puts every file in ``repo``."""
    return lambda _rel: repo


def walk_code_files(
    root: Path, prefix: str, repo_of: Callable[[str], str], skip: frozenset[str] = _SKIP_DIRS
) -> Iterator[ListedFile]:
    """Files under ``root`` whose language is known, in sorted order (deterministic)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if language_of(rel) is None or os.path.islink(full):
                continue
            try:
                size = os.path.getsize(full)
            except OSError:
                continue
            yield ListedFile(full, f"{prefix}{rel}", repo_of(rel), size)


def _files_dataframe(
    spark: SparkSession, files: list[ListedFile], source: str, license: str, max_bytes: int, partitions: int
) -> DataFrame:
    """Distribute a file listing and read the files on the executors."""
    listing = pd.DataFrame(
        {
            "abs_path": [f.abs_path for f in files],
            "path": [f.path for f in files],
            "repo": [f.repo for f in files],
            "size_bytes": [f.size_bytes for f in files],
        }
    )
    if listing.empty:
        return spark.createDataFrame([], INGEST_SCHEMA)

    def read(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            read_back = [read_text_file(a, s, max_bytes) for a, s in zip(pdf["abs_path"], pdf["size_bytes"])]
            yield pd.DataFrame(
                {
                    "id": None,
                    "content": [c for c, _ in read_back],
                    "lang": [language_of(p) or "unknown" for p in pdf["path"]],
                    "path": pdf["path"],
                    "repo": pdf["repo"],
                    "license": license,
                    "size_bytes": pdf["size_bytes"].astype("int64"),
                    "source": source,
                    "ingest_error": [e for _, e in read_back],
                }
            )

    df = spark.createDataFrame(listing).repartition(partitions)
    return df.mapInPandas(read, INGEST_SCHEMA)


# (spark, source config, max_file_bytes, partitions, staging folder, as_of) -> canonical rows
SourceBuilder = Callable[[SparkSession, Any, int, int, Path, "datetime | None"], DataFrame]
SOURCES: Registry[SourceBuilder] = Registry("source kind")


def git_toplevel(root: Path) -> str | None:
    """The git work tree whose files ``root`` holds, or None: not in a work tree, git missing, or
    ``root`` ignored by the enclosing one (a scratch folder inside a checkout is a plain tree)."""
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    if done.returncode != 0:
        return None
    ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "."], capture_output=True)
    return None if ignored.returncode == 0 else done.stdout.strip()


def git_files(root: Path, prefix: str, repo: str) -> Iterator[ListedFile]:
    """The files of a git work tree under ``root`` that are tracked or untracked but not ignored
    (what the repository holds, without build outputs), of a known language, in sorted order."""
    done = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise InputError(f"git ls-files failed in {root}: {done.stderr.strip()[:200]}")
    for rel in sorted(set(done.stdout.split("\0")) - {""}):
        full = root / rel
        if language_of(rel) is None or full.is_symlink() or not full.is_file():
            continue  # a deleted but still tracked file is simply gone
        yield ListedFile(str(full), f"{prefix}{rel}", repo, full.stat().st_size)


def commit_as_of(root: Path, as_of: datetime) -> str:
    """The last commit of HEAD's history made at or before ``as_of`` ('' when there is none)."""
    done = subprocess.run(
        ["git", "-C", str(root), "rev-list", "-1", f"--before={as_of.isoformat()}", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def subtree_at(root: Path, commit: str) -> str:
    """The tree object of directory ``root`` in ``commit`` ('' when the directory did not exist then)."""
    prefix = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-prefix"], capture_output=True, text=True).stdout.strip()
    done = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "-q", "--verify", f"{commit}:{prefix}"], capture_output=True, text=True
    )
    return done.stdout.strip() if commit and done.returncode == 0 else ""


def git_files_at(root: Path, commit: str, prefix: str, repo: str, dest: Path) -> list[ListedFile]:
    """The files of directory ``root`` as ``commit`` holds them, extracted under ``dest`` for the
    executors to read (a work tree only holds its latest state)."""
    tree = subtree_at(root, commit)
    if not tree:
        return []
    dest.mkdir(parents=True, exist_ok=True)
    top = git_toplevel(root) or str(root)  # archive refuses to run from a subdirectory it does not track
    archive = subprocess.Popen(["git", "-C", top, "archive", "--format=tar", tree], stdout=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, capture_output=True, text=True)
    if archive.wait() != 0 or untar.returncode != 0:
        raise InputError(f"cannot extract {root} at commit {commit[:12]} ({untar.stderr.strip()[:200]}); check the repository")
    return list(walk_code_files(dest, prefix, lambda _rel: repo))


def modified_by(path: str, as_of: datetime | None) -> bool:
    """Whether a file existed in its current state at ``as_of`` (always, without one)."""
    return as_of is None or os.path.getmtime(path) <= as_of.timestamp()


def tree_roots(cfg: TreeSourceConfig) -> list[tuple[Path, str]]:
    """Each directory of a ``tree`` source and its repo name; one clear line for a missing one."""
    roots = []
    for p in cfg.paths:
        root = Path(p).expanduser()
        if not root.is_dir():
            raise InputError(f"tree source path {root} is not a directory; fix data.sources[].paths")
        roots.append((root, cfg.repo or root.resolve().name))
    return roots


@SOURCES.register("tree")
def tree_source(
    spark: SparkSession, cfg: TreeSourceConfig, max_bytes: int, partitions: int, staging: Path, as_of: datetime | None = None
) -> DataFrame:
    """Directories of source files; each given directory is a repo. In a git work tree, the files
    git tracks or would track (ignored files are build outputs, not the repository's code).

    ``as_of`` (a scheduled run's data interval end): a git work tree is read at its last commit
    at or before it (uncommitted changes wait for a later run); a plain directory, without
    history, leaves out the files modified after it.
    """
    files: list[ListedFile] = []
    for i, (root, repo) in enumerate(tree_roots(cfg)):
        if git_toplevel(root) and as_of is not None:
            files += git_files_at(root, commit_as_of(root, as_of), f"{repo}/", repo, staging / f"tree-{i}")
        elif git_toplevel(root):
            files += git_files(root, f"{repo}/", repo)
        else:
            files += (f for f in walk_code_files(root, f"{repo}/", in_repo(repo)) if modified_by(f.abs_path, as_of))
    return _files_dataframe(spark, files, "tree", cfg.license, max_bytes, partitions)


def embedded_roots(cfg: EmbeddedSourceConfig) -> list[tuple[Path, str]]:
    """The directories of the embedded corpus and their path prefixes: the stdlib, then each listed package."""
    paths = sysconfig.get_paths()
    roots = []
    if cfg.include_stdlib:
        roots.append((Path(paths["stdlib"]), "stdlib/"))
    if cfg.include_site_packages:
        purelib = Path(paths["purelib"])
        missing = [p for p in cfg.packages if not (purelib / p).is_dir()]
        if missing:
            raise InputError(
                f"embedded source: package(s) {missing} are not installed in {purelib}; "
                "remove them from data.sources[].packages or run `make setup`"
            )
        roots += [(purelib / p, f"site-packages/{p}/") for p in sorted(cfg.packages)]
    return roots


def sample_embedded(cfg: EmbeddedSourceConfig) -> list[ListedFile]:
    """Deterministic sample of the stdlib + the listed packages up to ``max_bytes`` (sizes on disk).

    Files are ordered by a seeded hash of their dataset path, so the sample depends only on
    the interpreter, the listed packages' pinned versions, the seed and the budget.
    """
    files: list[ListedFile] = []
    for root, prefix in embedded_roots(cfg):
        if prefix == "stdlib/":
            # The interpreter's own site-packages lives inside the stdlib tree; the venv's is sampled instead.
            files += walk_code_files(root, prefix, lambda rel: "cpython", _SKIP_DIRS | {"site-packages", "dist-packages"})
        else:
            files += walk_code_files(root, prefix, in_repo(root.name))

    def key(f: ListedFile) -> str:
        return hashlib.sha256(f"{cfg.seed}:{f.path}".encode()).hexdigest()

    sample, total = [], 0
    for f in sorted(files, key=key):
        if total >= cfg.max_bytes:
            break
        sample.append(f)
        total += f.size_bytes
    return sample


@SOURCES.register("embedded")
def embedded_source(
    spark: SparkSession, cfg: EmbeddedSourceConfig, max_bytes: int, partitions: int, staging: Path, as_of: datetime | None = None
) -> DataFrame:
    """The Python standard library plus a fixed list of installed packages: real code on every
    machine (installed files, so ``as_of`` does not apply)."""
    return _files_dataframe(spark, sample_embedded(cfg), "embedded", "PSF-2.0 and package licenses", max_bytes, partitions)


def expand_parquet_paths(paths: list[str], as_of: datetime | None = None) -> list[str]:
    """Local paths, directories and globs -> parquet files (those written by ``as_of`` when given);
    object-store URIs pass through."""
    out: list[str] = []
    for p in paths:
        if "://" in p and not p.startswith("file://"):
            out.append(p)  # s3a://, gs://, abfss://: Spark lists them itself
            continue
        local = p.removeprefix("file://")
        matches = sorted(glob.glob(local)) if glob.has_magic(local) else [local]
        if not matches or not all(os.path.exists(m) for m in matches):
            raise InputError(f"parquet input {p} does not exist; check the path or glob")
        for m in matches:
            if os.path.isdir(m):
                found = sorted(str(f) for f in Path(m).rglob("*.parquet") if not f.name.startswith((".", "_")))
                if not found:
                    raise InputError(f"parquet input directory {m} holds no .parquet files")
                out += found
            else:
                out.append(m)
    return [f for f in out if "://" in f or modified_by(f, as_of)]


def check_parquet_files(files: list[str]) -> set[str]:
    """Fail with the file's name if a local file is not readable parquet; return its columns."""
    import pyarrow.parquet as pq

    columns: set[str] | None = None
    for f in files:
        if "://" in f:
            continue
        try:
            names = set(pq.read_schema(f).names)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"cannot read parquet file {f}: {first}; replace or remove the file") from None
        columns = names if columns is None else columns & names
    return columns or set()


def parquet_dataframe(spark: SparkSession, paths: list[str], source: str, as_of: datetime | None = None) -> DataFrame:
    """Read parquet in The Stack's schema or the canonical one and map it to canonical."""
    files = expand_parquet_paths(paths, as_of)
    if not files:
        return spark.createDataFrame([], INGEST_SCHEMA)
    local_columns = check_parquet_files(files)
    df = spark.read.parquet(*files)
    cols = set(df.columns)
    path_col = "path" if "path" in cols else "max_stars_repo_path" if "max_stars_repo_path" in cols else None
    if "content" not in cols or path_col is None:
        missing = [c for c in ("content", "path") if c not in cols and not (c == "path" and path_col)]
        where = files[0] if local_columns else ", ".join(paths)
        raise InputError(
            f"parquet input {where} lacks column(s) {', '.join(missing)}; "
            "expected `content` and `path` (or The Stack's `max_stars_repo_path`)"
        )
    repo = F.col("repo") if "repo" in cols else F.col("max_stars_repo_name") if "max_stars_repo_name" in cols else F.lit("")
    if "license" in cols:
        license = F.col("license").cast("string")
    elif "max_stars_repo_licenses" in cols:
        license = F.array_join(F.col("max_stars_repo_licenses"), ",")
    else:
        license = F.lit("")
    to_lang = F.udf(lambda name, path: canonical_language(name, path), T.StringType())
    lang = to_lang(F.col("lang") if "lang" in cols else F.lit(None), F.col(path_col))
    return df.select(
        (F.col("id").cast("string") if "id" in cols else F.lit(None).cast("string")).alias("id"),
        F.col("content").cast("string").alias("content"),
        lang.alias("lang"),
        F.col(path_col).cast("string").alias("path"),
        F.coalesce(repo.cast("string"), F.lit("")).alias("repo"),
        F.coalesce(license, F.lit("")).alias("license"),
        F.coalesce(F.octet_length("content"), F.lit(0)).cast("long").alias("size_bytes"),
        F.lit(source).alias("source"),
        F.when(F.col("content").isNull(), F.lit("undecodable")).alias("ingest_error"),
    )


@SOURCES.register("parquet")
def parquet_source(
    spark: SparkSession, cfg: ParquetSourceConfig, max_bytes: int, partitions: int, staging: Path, as_of: datetime | None = None
) -> DataFrame:
    """Parquet files or globs (local or object store) in The Stack's or the canonical schema; with
    ``as_of``, the local files written by then (a file is a batch of rows, added once)."""
    return parquet_dataframe(spark, cfg.paths, cfg.name, as_of)


def _hub_error(dataset: str, exc: Exception) -> InputError:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    if "gated" in text.lower() or "401" in text or "403" in text:
        fix = f"accept the terms at hf.co/datasets/{dataset} and export HF_TOKEN"
    else:
        fix = "check the network and HF_TOKEN, or download the parquet files and use the `parquet` source"
    return InputError(f"cannot load {dataset} from the Hugging Face Hub ({text[:200]}); {fix}")


@SOURCES.register("stack")
def stack_source(
    spark: SparkSession, cfg: StackSourceConfig, max_bytes: int, partitions: int, staging: Path, as_of: datetime | None = None
) -> DataFrame:
    """The Stack through `datasets`, staged as parquet and read like the `parquet` source (a
    dataset revision is its own snapshot, so ``as_of`` does not apply).

    Staging through local parquet suits samples and single-language subsets; at full
    scale, point the `parquet` source at the dataset's parquet files on object storage.
    """
    import datasets

    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    staged: list[str] = []
    staging.mkdir(parents=True, exist_ok=True)
    for language in cfg.languages:
        try:
            ds = datasets.load_dataset(
                cfg.dataset, data_dir=f"data/{language}", split="train", revision=cfg.revision, token=token
            )
        except Exception as exc:  # datasets/hub raise many types; all mean "could not load"
            raise _hub_error(cfg.dataset, exc) from None
        if cfg.max_rows_per_language is not None:
            ds = ds.select(range(min(cfg.max_rows_per_language, len(ds))))
        out = staging / f"stack-{language}.parquet"
        ds.to_parquet(str(out))
        staged.append(str(out))
    return parquet_dataframe(spark, staged, "stack")
