"""The `pairs` stage: post-training data from the clean data and from files, decontaminated.

Supervised pairs come from two places: documented Python functions mined from the data
stage's clean files (:mod:`lathe.data.mining`; those with doctests keep them as tests) and
any configured ``prompt``/``response`` files. Preference triples come from configured
``prompt``/``chosen``/``rejected`` files. Every row is checked against HumanEval
(:mod:`lathe.data.decontam`) and kept or dropped with a counted reason:
``input == kept + dropped`` per kind, checked.

Outputs (parquet): ``sft`` (pair_id, source, path, name, prompt, suffix, response, tests, imports),
``preferences`` (pair_id, source, prompt, suffix, chosen, rejected) and ``dropped`` (pair_id,
kind, source, reason).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from rich.console import Console

from lathe.core.errors import LatheError
from lathe.core.spark import SparkConfig, spark_session
from lathe.core.stage import Stage, StageContext, StageResult, json_summary
from lathe.data.config import PairsConfig
from lathe.data.decontam import NgramIndex, drop_contaminated, humaneval_index
from lathe.data.mining import mine_pairs, pair_id
from lathe.data.records import PREFERENCE_FIELDS, SFT_FIELDS, read_records

REPORT = "pairs.json"
SFT_COLUMNS = ("pair_id", "source", "path", "name", "prompt", "suffix", "response", "tests", "imports")
PREFERENCE_COLUMNS = ("pair_id", "source", "prompt", "suffix", "chosen", "rejected")
MINED = "mined"  # the `source` of mined pairs; rows read from a file carry the file's path


class PairsSections(Protocol):
    """The config sections the pairs stage reads."""

    pairs: PairsConfig
    spark: SparkConfig


def observe_files(cfg: PairsSections) -> dict[str, str]:
    """A digest of what the configured files hold now (each file's size and modification time or ETag, a
    directory's files included): a new export under the same name reruns the stage. None configured: nothing."""
    import fsspec

    files = [*cfg.pairs.sft_files, *cfg.pairs.preference_files]
    if not files:
        return {}
    state = []
    for file in files:
        try:
            fs, inner = fsspec.core.url_to_fs(file)
            found = fs.find(inner, detail=True) if fs.isdir(inner) else {inner: fs.info(inner)}
        except (ImportError, ValueError, OSError):
            state.append([file, "unreadable"])  # the stage itself fails on it with one clear line
            continue
        for path, info in sorted(found.items()):
            stamp = info.get("mtime") or info.get("ETag") or info.get("LastModified") or info.get("created")
            state.append([path, info.get("size"), str(stamp)])
    return {"files": hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]}


def file_rows(
    spark: SparkSession, files: list[str], fields: tuple[str, ...], columns: tuple[str, ...], drops: Counter[str]
) -> DataFrame | None:
    """The valid records of ``files`` as a DataFrame of ``columns`` (None: no file); their drops added to ``drops``."""
    rows: list[dict[str, str]] = []
    for file in files:
        records, dropped = read_records(file, fields)
        drops.update(dropped)
        rows += [
            {"pair_id": pair_id(f"file:{file}", str(i)), "source": file, "path": "", "name": "", "tests": "", "imports": "", **r}
            for i, r in enumerate(records)
        ]
    if not files:
        return None
    schema = ", ".join(f"{c} string" for c in columns)
    return spark.createDataFrame([tuple(r[c] for c in columns) for r in rows], schema)


def run_pairs(ctx: StageContext[PairsSections]) -> StageResult:
    """Mine, read, decontaminate and write the post-training data; count every row."""
    cfg = ctx.config.pairs
    spark = spark_session(ctx.config.spark, "lathe-pairs")
    index = humaneval_index(cfg.ngram)
    counts: dict[str, int] = {}
    dropped_frames: list[DataFrame] = []

    # Supervised pairs: mined (their tests are checked too: a test may quote HumanEval) and from files.
    read_drops: Counter[str] = Counter()
    frames = []
    if cfg.mine:
        clean = spark.read.parquet(ctx.inputs["data"].uri("clean"))
        mined = mine_pairs(clean).withColumns({"source": F.lit(MINED), "suffix": F.lit("")})
        frames.append(mined.select(*SFT_COLUMNS))
    files = file_rows(spark, cfg.sft_files, SFT_FIELDS, SFT_COLUMNS, read_drops)
    frames += [files] if files is not None else []
    if not frames:
        raise LatheError("no supervised pairs: pairs.mine is off and pairs.sft_files is empty; enable one of them")
    sft = frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])
    sft = sft.persist()
    counts |= _split("sft", sft, index, ["prompt", "suffix", "response", "tests"], ctx.outputs["sft"], read_drops, dropped_frames)

    pref_drops: Counter[str] = Counter()
    prefs = file_rows(spark, cfg.preference_files, PREFERENCE_FIELDS, PREFERENCE_COLUMNS, pref_drops)
    if prefs is None:
        prefs = spark.createDataFrame([], ", ".join(f"{c} string" for c in PREFERENCE_COLUMNS))
    counts |= _split(
        "preferences",
        prefs,
        index,
        ["prompt", "suffix", "chosen", "rejected"],
        ctx.outputs["preferences"],
        pref_drops,
        dropped_frames,
    )

    dropped = dropped_frames[0].unionByName(dropped_frames[1])
    dropped.write.mode("overwrite").parquet(ctx.outputs["dropped"])
    sft_out = spark.read.parquet(ctx.outputs["sft"])
    counts["sft.with_tests"] = sft_out.where(F.col("tests") != "").count()
    counts["sft.mined"] = sft_out.where(F.col("source") == MINED).count()
    sft.unpersist()
    report = {"counts": counts, "ngram": cfg.ngram, "reference_ngrams": len(index)}
    Path(ctx.out_dir / REPORT).write_text(json.dumps(report, indent=2))
    print_pairs(report, ctx.console)
    snapshot = ctx.inputs["data"].details.get("snapshot")
    return StageResult(counts=counts, artifacts=[ctx.out_dir / REPORT], details={"ngram": cfg.ngram, "data_snapshot": snapshot})


def _split(
    kind: str,
    rows: DataFrame,
    index: NgramIndex,
    columns: list[str],
    out: str,
    read_drops: Counter[str],
    dropped_frames: list[DataFrame],
) -> dict[str, int]:
    """Write ``rows`` free of HumanEval n-grams to ``out``, collect the contaminated ones with their reason,
    and return the counts of ``kind`` (rows dropped while reading included): input, kept, dropped.<reason>."""
    kept, contaminated = drop_contaminated(rows, index, columns)
    kept.write.mode("overwrite").parquet(out)
    dropped = contaminated.select("pair_id", F.lit(kind).alias("kind"), "source", "reason").persist()
    dropped_frames.append(dropped)
    n_kept = rows.sparkSession.read.parquet(out).count()
    by_reason = Counter({r["reason"]: r["count"] for r in dropped.groupBy("reason").count().collect()}) + read_drops
    n_input = rows.count() + sum(read_drops.values())
    if n_kept + sum(by_reason.values()) != n_input:
        raise LatheError(f"pairs: {kind} lost rows ({n_input} in, {n_kept} kept, {sum(by_reason.values())} dropped)")
    return {f"{kind}.input": n_input, f"{kind}.kept": n_kept, **{f"{kind}.dropped.{r}": c for r, c in sorted(by_reason.items())}}


def print_pairs(report: dict[str, Any], console: Console) -> None:
    """What each kind of post-training data kept and dropped, by reason."""
    counts = report["counts"]
    for kind in ("sft", "preferences"):
        drops = ", ".join(f"{k.rsplit('.', 1)[1]} {v}" for k, v in counts.items() if k.startswith(f"{kind}.dropped."))
        line = f"[bold]{kind}[/]: {counts[f'{kind}.input']:,} in, {counts[f'{kind}.kept']:,} kept"
        console.print(line + (f"; dropped {drops}" if drops else ""))
    console.print(
        f"supervised pairs with doctests (execution-feedback problems): {counts['sft.with_tests']:,}; "
        f"decontaminated against HumanEval at {report['ngram']} words"
    )


def pairs_headline(manifest: dict[str, Any]) -> str:
    """Pairs and preferences kept, and how many were contaminated."""
    c = manifest["counts"]
    return (
        f"{c['sft.kept']:,} pairs ({c['sft.with_tests']:,} with tests), {c['preferences.kept']:,} preferences; "
        f"contaminated {c.get('sft.dropped.contaminated', 0) + c.get('preferences.dropped.contaminated', 0)}"
    )


PAIRS: Stage[Any] = Stage(
    name="pairs",
    inputs=("data",),
    section=lambda cfg: cfg.pairs,
    run=run_pairs,
    outputs={"sft": "sft", "preferences": "preferences", "dropped": "dropped"},
    summarize=json_summary(REPORT, print_pairs),
    headline=pairs_headline,
    observe=observe_files,
    optional=True,
)
