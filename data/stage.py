"""The `data` stage: sources -> ingested parquet -> clean, deduplicated parquet + x-ray."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from lathe.core.errors import InputError, LatheError
from lathe.core.spark import SparkConfig, spark_session
from lathe.core.stage import Stage, StageContext, StageResult, json_summary
from lathe.data.config import DataConfig
from lathe.data.pipeline import clean_and_report, ingest
from lathe.data.snapshot import snapshot_sources
from lathe.data.xray import print_summary


class AsOf(Protocol):
    """The part of the `run` section the data stage reads."""

    as_of: datetime | None  # read the sources as they were then (a scheduled run's data interval end)


class DataSections(Protocol):
    """The config sections the data stage reads."""

    data: DataConfig
    spark: SparkConfig
    run: AsOf


def observe_sources(cfg: DataSections) -> dict[str, str]:
    """The sources' snapshot id: a changed source reruns the stage, an unchanged one skips it."""
    return {"snapshot": snapshot_sources(cfg.data.sources, cfg.run.as_of)[0]}


# Settings of the data section the pool's per-file work does not depend on.
_NOT_PER_FILE = ("sources", "partitions", "on_empty_source", "contamination_ngram")


def _cleaning_config(section: dict[str, Any]) -> dict[str, Any]:
    """The data section without what the per-file work in the pool does not depend on."""
    return {k: v for k, v in section.items() if k not in _NOT_PER_FILE}


def reusable_pool(ctx: StageContext[DataSections]) -> Path | None:
    """The previous run's pool when it was made by this stage version with the same cleaning config."""
    previous = ctx.previous
    if previous is None:
        return None
    same = previous.manifest.get("version") == DATA.version and _cleaning_config(
        previous.manifest.get("config", {})
    ) == _cleaning_config(ctx.config.data.model_dump(mode="json"))
    pool = Path(previous.uri("pool"))
    if not same or not pool.is_dir():
        ctx.console.print("the cleaning config or code changed since the previous run: cleaning every file again")
        return None
    return pool


def run_data(ctx: StageContext[DataSections]) -> StageResult:
    """Ingest the configured sources, clean and deduplicate them (only new and changed files when a
    previous run's pool can be reused), write the x-ray."""
    cfg = ctx.config.data
    as_of = ctx.config.run.as_of
    snapshot_id, snapshots = snapshot_sources(cfg.sources, as_of)
    if ctx.observed and snapshot_id != ctx.observed["snapshot"]:
        raise LatheError(
            f"the sources changed while the data stage started (snapshot {ctx.observed['snapshot']} -> "
            f"{snapshot_id}); rerun `lathe run data` once they are quiet"
        )
    Path(ctx.outputs["snapshot"]).write_text(
        json.dumps({"snapshot": snapshot_id, "as_of": as_of.isoformat() if as_of else None, "sources": snapshots}, indent=2)
    )
    ctx.console.print(f"sources snapshot {snapshot_id}" + (f" as of {as_of.isoformat()}" if as_of else ""))
    spark = spark_session(ctx.config.spark, "lathe-data")
    ingested_dir = ctx.out_dir / "ingested"
    ctx.console.print(f"ingest: {', '.join(s.kind for s in cfg.sources)} -> {ingested_dir}")
    (
        ingest(spark, cfg, ctx.out_dir / "staging", as_of)
        .repartition("lang")
        .sortWithinPartitions("id")
        .write.mode("overwrite")
        .parquet(str(ingested_dir))
    )
    shutil.rmtree(ctx.out_dir / "staging", ignore_errors=True)  # extracted commits, staged downloads: read into ingested/
    ingested = spark.read.parquet(str(ingested_dir))
    _, result = clean_and_report(ingested, cfg, ctx.out_dir, ctx.console, reusable_pool(ctx))
    result.details["snapshot"] = snapshot_id
    result.details["as_of"] = as_of.isoformat() if as_of else None
    empty = empty_sources(cfg, json.loads(Path(ctx.outputs["xray"]).read_text()))
    if empty and cfg.on_empty_source == "fail":
        raise InputError("; ".join(empty) + "; fix data.sources (or set data.on_empty_source=warn)")
    for problem in empty:
        ctx.console.print(f"[yellow]warning[/]: {problem}")
    return result


def empty_sources(cfg: DataConfig, xray: dict[str, Any]) -> list[str]:
    """One line per configured source that yielded no kept file (sources are told apart by their
    `source` column: the kind, or a parquet source's name)."""
    by_source = {r["source"]: r for r in xray["sources"]}
    problems = []
    for name in sorted({s.name if s.kind == "parquet" else s.kind for s in cfg.sources}):
        row = by_source.get(name) or {"files_in": 0, "files_kept": 0}
        if not row["files_kept"]:
            problems.append(f"source {name} yielded no kept file ({row['files_in'] or 0} in)")
    return problems


def data_headline(manifest: dict[str, Any]) -> str:
    """Files in and kept, and the largest drop reasons."""
    drops = sorted(
        ((k.split(".", 1)[1], int(v)) for k, v in manifest["metrics"].items() if k.startswith("dropped.") and v),
        key=lambda x: -x[1],
    )
    counts = manifest["counts"]
    line = f"{counts['input']:,} files in, {counts['kept']:,} kept; dropped " + ", ".join(f"{k} {v}" for k, v in drops[:4])
    if "files.new" in counts:  # an incremental run: what changed since the previous snapshot
        line += (
            f"; since the last snapshot {counts['files.new']:,} new, {counts['files.changed']:,} changed, "
            f"{counts['files.deleted']:,} deleted files ({counts['processed']:,} cleaned, the rest reused)"
        )
    return line


DATA: Stage[Any] = Stage(
    name="data",
    inputs=(),
    section=lambda cfg: cfg.data,
    run=run_data,
    outputs={"clean": "kept", "dropped": "dropped", "xray": "xray/xray.json", "pool": "pool", "snapshot": "snapshot.json"},
    # 4: exact-Jaccard dedup features (shingle hashes), secret families; 3: per-file pool (incremental
    # reruns); 2: PII precision fixes (OIDs, section anchors, placeholder credentials)
    version="4",
    summarize=json_summary("xray/xray.json", print_summary),
    headline=data_headline,
    observe=observe_sources,
    incremental=True,
)
