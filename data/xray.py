"""X-ray of a cleaned dataset: per-language and per-source statistics, plots, summary.

Statistics are aggregated by Spark; only the small per-group tables reach the driver.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from rich.console import Console
from rich.table import Table

from lathe.core.plots import pyplot
from lathe.data.clean import PII_COLUMNS, CleanResult

QUANTILES = [0.1, 0.5, 0.9]


def _rows(df: DataFrame) -> list[dict[str, Any]]:
    return [r.asDict(recursive=True) for r in df.collect()]


def compute_xray(result: CleanResult) -> dict[str, Any]:
    """Aggregate the annotated rows into the x-ray tables (JSON-serialisable)."""
    final = result.final
    kept = F.col("reason").isNull()
    by_lang = final.groupBy("lang").agg(
        F.count("*").alias("files_in"),
        F.sum("size_bytes").alias("bytes_in"),
        F.sum(kept.cast("int")).alias("files_kept"),
        F.sum(F.when(kept, F.col("size_bytes")).otherwise(0)).alias("bytes_kept"),
        *[F.sum(F.when(kept, F.col(c)).otherwise(0)).alias(c) for c in PII_COLUMNS],
    )
    kept_stats = (
        final.where(kept)
        .groupBy("lang")
        .agg(
            F.percentile_approx("size_bytes", QUANTILES).alias("size_bytes_q10_50_90"),
            F.percentile_approx("mean_line_length", QUANTILES).alias("mean_line_length_q10_50_90"),
            F.percentile_approx("max_line_length", QUANTILES).alias("max_line_length_q10_50_90"),
        )
    )
    languages = sorted(_rows(by_lang.join(kept_stats, "lang", "left")), key=lambda r: -r["bytes_in"])
    by_source = _rows(
        final.groupBy("source").agg(
            F.count("*").alias("files_in"),
            F.sum("size_bytes").alias("bytes_in"),
            F.sum(kept.cast("int")).alias("files_kept"),
        )
    )
    reasons = _rows(final.where(~kept).groupBy("lang", "reason").count())
    clusters = (
        final.where(F.col("duplicate_of").isNotNull())
        .groupBy("duplicate_of")
        .agg((F.count("*") + 1).alias("size"))
        .groupBy("size")
        .count()
    )
    cluster_sizes = {int(r["size"]): int(r["count"]) for r in clusters.collect()}
    return {
        "input_files": result.input_rows,
        "kept_files": result.kept_rows,
        "dropped_files": result.dropped_rows,
        "drop_reasons": result.drop_reasons,
        "redactions": result.redactions,
        "languages": languages,
        "sources": sorted(by_source, key=lambda r: r["source"]),
        "drop_reasons_by_language": sorted(reasons, key=lambda r: (r["lang"], r["reason"])),
        "duplicate_cluster_sizes": dict(sorted(cluster_sizes.items())),
        "dedup_iterations": result.dedup_iterations,
        # beside the totals: what changed since the previous snapshot (None for a full build)
        "delta": asdict(result.delta) if result.delta else None,
    }


def plot_xray(xray: dict[str, Any], out_dir: Path, top: int = 12) -> list[Path]:
    """PNG plots: kept/dropped by language and reason, and duplicate cluster sizes."""
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    langs = [r["lang"] for r in xray["languages"][:top]]
    reasons = sorted({r["reason"] for r in xray["drop_reasons_by_language"]})
    counts = {(r["lang"], r["reason"]): r["count"] for r in xray["drop_reasons_by_language"]}
    kept = {r["lang"]: r["files_kept"] for r in xray["languages"]}
    fig, ax = plt.subplots(figsize=(10, 5))
    bottom = [0] * len(langs)
    for name, values in [("kept", [kept.get(lang, 0) for lang in langs])] + [
        (reason, [counts.get((lang, reason), 0) for lang in langs]) for reason in reasons
    ]:
        ax.bar(langs, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("files")
    ax.set_title("Files kept and dropped (by reason), per language")
    ax.legend(fontsize=7, ncol=2)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    paths.append(out_dir / "files_by_language.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    sizes = xray["duplicate_cluster_sizes"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([str(s) for s in sizes], list(sizes.values()))
    ax.set_xlabel("cluster size (files)")
    ax.set_ylabel("clusters")
    ax.set_title("Duplicate clusters (exact + near)")
    fig.tight_layout()
    paths.append(out_dir / "duplicate_clusters.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def write_xray(
    result: CleanResult, out_dir: Path, contamination: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[Path]]:
    """Compute, save (xray.json + plots) and return the x-ray and its files (with the contamination report, if made)."""
    xray = compute_xray(result)
    if contamination is not None:
        xray["contamination"] = contamination
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "xray.json").write_text(json.dumps(xray, indent=2, default=str))
    return xray, [out_dir / "xray.json", *plot_xray(xray, out_dir)]


def _mb(n: float | None) -> str:
    return f"{(n or 0) / 1e6:,.2f}"


def print_summary(xray: dict[str, Any], console: Console | None = None, top: int = 12) -> None:
    """One screen: totals, per-language table, drop reasons, redactions, duplicate clusters."""
    console = console or Console()
    console.print(
        f"[bold]x-ray[/]: {xray['input_files']:,} files in, {xray['kept_files']:,} kept, {xray['dropped_files']:,} dropped"
    )
    delta = xray.get("delta")
    if delta:
        files = ", ".join(f"{k} {v:,}" for k, v in delta["files"].items())
        dropped = ", ".join(f"{k}={v:,}" for k, v in delta["dropped"].items()) or "none"
        console.print(
            f"since the previous snapshot: {files} files; cleaned {delta['processed_rows']:,} "
            f"(kept {delta['kept']:,}, dropped {dropped}), the rest reused"
        )
    table = Table(title="per language (top by input bytes)", show_lines=False)
    for col in ["lang", "files in", "kept", "MB in", "MB kept", "median size", "median mean line", "redactions"]:
        table.add_column(col, justify="right" if col != "lang" else "left")
    for r in xray["languages"][:top]:
        q = r.get("size_bytes_q10_50_90") or [None] * 3
        m = r.get("mean_line_length_q10_50_90") or [None] * 3
        red = sum(int(r.get(c) or 0) for c in PII_COLUMNS)
        table.add_row(
            r["lang"],
            f"{r['files_in']:,}",
            f"{r['files_kept'] or 0:,}",
            _mb(r["bytes_in"]),
            _mb(r["bytes_kept"]),
            "-" if q[1] is None else f"{q[1]:,}",
            "-" if m[1] is None else f"{m[1]:.1f}",
            str(red),
        )
    console.print(table)
    reasons = ", ".join(f"{k}={v:,}" for k, v in sorted(xray["drop_reasons"].items(), key=lambda kv: -kv[1]))
    console.print(f"drop reasons: {reasons or 'none'}")
    console.print("redactions: " + ", ".join(f"{k}={v:,}" for k, v in xray["redactions"].items()))
    if "contamination" in xray:
        c = xray["contamination"]
        langs = ", ".join(f"{k}={v:,}" for k, v in c["by_language"].items()) or "none"
        console.print(
            f"HumanEval overlap ({c['ngram']} words): {c['files']:,} kept files ({langs})"
            + (f", e.g. {', '.join(c['examples'][:3])}" if c["examples"] else "")
        )
    clusters = xray["duplicate_cluster_sizes"]
    console.print(
        f"duplicate clusters: {sum(clusters.values()):,} "
        f"(sizes: {', '.join(f'{s}x{c}' for s, c in list(clusters.items())[:8]) or 'none'})"
    )
