"""The `tokenizer` and `shards` stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from rich.console import Console
from rich.table import Table

from data.spark import spark_session
from pipelines.errors import InputError, LatheError
from pipelines.stages import Stage, StageContext, StageResult, json_summary, register
from tokenizer.config import ShardsConfig, TokenizerConfig
from tokenizer.report import evaluate, plot_report, print_report
from tokenizer.shards import ShardSummary, merge_split_indexes, read_back, summarize_parts, tokenize, write_parts
from tokenizer.special import PAD
from tokenizer.splits import stable_fraction_col
from tokenizer.vocab import load_tokenizer, save_tokenizer, train_bpe

HELDOUT_SALT = "tokenizer-heldout"


def read_clean(spark, data_dir: Path) -> DataFrame:
    """The data stage's kept rows; a missing or empty set is one clear error."""
    kept = data_dir / "kept"
    if not kept.is_dir():
        raise InputError(f"clean data {kept} not found; run `lathe run data` first")
    df = spark.read.parquet(str(kept))
    if df.limit(1).count() == 0:
        raise InputError(f"clean data {kept} is empty; widen data.sources or relax the filters")
    return df


def draw_sample(df: DataFrame, cfg: TokenizerConfig, heldout_max_files: int = 2000) -> tuple[list[str], list[tuple[str, str, str]]]:
    """(training texts, held-out (path, lang, content)) drawn by Spark from the clean data.

    Held-out files are chosen by a stable hash of the id and never trained on; the
    training sample is a seeded Bernoulli sample sized to ``sample_bytes``.
    """
    marked = df.withColumn("h", stable_fraction_col(F.col("id"), HELDOUT_SALT))
    heldout_df = marked.where(F.col("h") < cfg.heldout_fraction).orderBy("h").limit(heldout_max_files)
    heldout = [(r["path"], r["lang"], r["content"]) for r in heldout_df.select("path", "lang", "content").collect()]
    train = marked.where(F.col("h") >= cfg.heldout_fraction)
    total = train.agg(F.sum(F.octet_length("content"))).first()[0] or 0
    fraction = min(1.0, cfg.sample_bytes / total) if total else 1.0
    sampled = train.sample(fraction=fraction, seed=cfg.seed) if fraction < 1.0 else train
    texts = [r["content"] for r in sampled.orderBy("id").select("content").collect()]
    return texts, heldout


def run_tokenizer(ctx: StageContext) -> StageResult:
    """Train the vocabulary (and the ablation sizes) and write the report."""
    cfg = ctx.config.tokenizer
    spark = spark_session(ctx.config.spark, "lathe-tokenizer")
    texts, heldout = draw_sample(read_clean(spark, ctx.inputs["data"]), cfg)
    if not heldout:
        raise InputError("no held-out files for the tokenizer report; raise tokenizer.heldout_fraction")
    ctx.console.print(f"training BPE {cfg.vocab_size:,} on {len(texts):,} files; held out {len(heldout):,}")
    tok = train_bpe(texts, cfg.vocab_size, cfg.reserved_sentinels, cfg.min_frequency)
    if tok.get_vocab_size() != cfg.vocab_size:
        raise InputError(
            f"the sample ({len(texts):,} files) supports only {tok.get_vocab_size():,} tokens, not "
            f"tokenizer.vocab_size={cfg.vocab_size:,}; lower it or sample more data"
        )
    main = evaluate(tok, heldout)
    ablation = [main]
    for size in sorted(set(cfg.ablation_vocab_sizes) - {cfg.vocab_size}):
        ablation.append(evaluate(train_bpe(texts, size, cfg.reserved_sentinels, cfg.min_frequency), heldout))
    report = {
        "sample_files": len(texts),
        "sample_bytes": sum(len(t.encode("utf-8")) for t in texts),
        "main": main,
        "ablation": [{k: r[k] for k in ("vocab_size", "bytes_per_token", "vocab_used_share")} for r in ablation],
    }
    files = save_tokenizer(tok, ctx.out_dir)
    (ctx.out_dir / "report.json").write_text(json.dumps(report, indent=2))
    plots = plot_report(report, ctx.out_dir)
    print_report(report, ctx.console)
    if main["round_trip_failures"]:
        raise LatheError(
            f"tokenizer round trip failed on {main['round_trip_failures']} held-out files "
            f"(e.g. {main['round_trip_failed_paths'][0]}); the vocabulary is not lossless"
        )
    return StageResult(
        counts={"sample_files": len(texts), "heldout_files": len(heldout), "vocab_size": tok.get_vocab_size()},
        metrics={
            "bytes_per_token": main["bytes_per_token"],
            "round_trip_rate": main["round_trip_rate"],
            "vocab_used_share": main["vocab_used_share"],
            **{f"bytes_per_token.{lang}": s["bytes_per_token"] for lang, s in main["languages"].items()},
            **{f"ablation.bytes_per_token.{r['vocab_size']}": r["bytes_per_token"] for r in report["ablation"]},
        },
        artifacts=[*files, ctx.out_dir / "report.json", *plots],
        details={"tokenizer": str(ctx.out_dir / "tokenizer.json")},
    )


TOKENIZER = register(
    Stage(
        name="tokenizer",
        inputs=("data",),
        section=lambda cfg: cfg.tokenizer,
        run=run_tokenizer,
        version="1",
        summarize=json_summary("report.json", print_report),
    )
)


def _prepare_output(out_root: str) -> None:
    """Start from an empty local output (no stale parts); fail early if it is not writable."""
    if "://" in out_root:
        return  # object stores: the writers create it; credentials are checked on first write
    path = Path(out_root)
    try:
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        (path / ".write-test").write_text("ok")
        (path / ".write-test").unlink()
    except OSError as exc:
        raise InputError(f"shards output {out_root} is not writable ({exc.strerror}); fix shards.output") from None


def run_shards(ctx: StageContext) -> StageResult:
    """Tokenize, FIM-transform and pack the clean data into train/val MDS shards, then read them back."""
    cfg = ctx.config.shards
    tok = load_tokenizer(ctx.inputs["tokenizer"], ctx.config.tokenizer.vocab_size)
    out_root = cfg.output or str(ctx.out_dir / "mds")
    _prepare_output(out_root)
    spark = spark_session(ctx.config.spark, "lathe-shards")
    docs = read_clean(spark, ctx.inputs["data"])
    pad_id = tok.token_to_id(PAD)
    stats = write_parts(tokenize(docs, tok.to_str(), cfg), out_root, cfg, tok.get_vocab_size(), pad_id)
    totals = summarize_parts(stats)
    for split, total in totals.items():
        if total.docs == 0:
            raise InputError(f"the {split} split is empty; add data or change shards.val_fraction")
    merge_split_indexes(out_root)

    first = np.zeros(0)
    for split, total in totals.items():
        samples, tokens, head = read_back(f"{out_root.rstrip('/')}/{split}", ctx.out_dir / "cache" / split)
        if (samples, tokens) != (total.samples, total.tokens + total.padding):
            raise LatheError(
                f"{split} shards read back {samples} samples / {tokens} tokens but {total.samples} / "
                f"{total.tokens + total.padding} were written; rerun `lathe run shards --force`"
            )
        first = head if split == "train" else first
    sample_text = tok.decode(first.tolist(), skip_special_tokens=False)
    print_shards(totals, cfg, sample_text, ctx.console)
    counts = {f"{s}.{k}": int(getattr(t, k)) for s, t in totals.items() for k in ("docs", "fim_docs", "samples", "tokens", "padding")}
    return StageResult(
        counts=counts,
        metrics={"fim_share": sum(t.fim_docs for t in totals.values()) / max(sum(t.docs for t in totals.values()), 1)},
        details={"output": out_root, "seq_len": cfg.seq_len, "vocab_size": tok.get_vocab_size(), "sample": sample_text[:1000],
                 "parts": sorted(stats, key=lambda r: (r["split"], r["part"]))},
    )


def print_shards(totals: dict[str, ShardSummary], cfg: ShardsConfig, sample: str, console: Console) -> None:
    """The shard summary and a decoded sample."""
    table = Table(title=f"MDS shards (seq_len {cfg.seq_len}, FIM rate {cfg.fim_rate})")
    for col in ["split", "docs", "FIM docs", "samples", "tokens", "padding"]:
        table.add_column(col, justify="left" if col == "split" else "right")
    for t in totals.values():
        table.add_row(t.split, f"{t.docs:,}", f"{t.fim_docs:,}", f"{t.samples:,}", f"{t.tokens:,}", f"{t.padding:,}")
    console.print(table)
    console.print("first training sample, decoded (300 chars):")
    console.print(repr(sample[:300]), highlight=False)


def summarize_shards_stage(out_dir: Path, console: Console) -> None:
    """Reprint the summary of a finished shards stage from its manifest."""
    manifest = json.loads((out_dir / "manifest.json").read_text())
    cfg = ShardsConfig.model_validate(manifest["config"])
    totals = summarize_parts(manifest["details"]["parts"])
    print_shards(totals, cfg, manifest["details"]["sample"], console)


SHARDS = register(
    Stage(
        name="shards",
        inputs=("data", "tokenizer"),
        section=lambda cfg: cfg.shards,
        run=run_shards,
        version="1",
        summarize=summarize_shards_stage,
    )
)
