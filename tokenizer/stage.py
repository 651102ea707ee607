"""The `tokenizer` and `shards` stages (wiring; the work is in vocab, report, corpus and shards)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rich.console import Console

from lathe.core.errors import InputError, LatheError
from lathe.core.models import resolve_source
from lathe.core.spark import SparkConfig, spark_session
from lathe.core.stage import Stage, StageContext, StageResult, json_summary
from lathe.tokenizer.config import ShardsConfig, TokenizerConfig
from lathe.tokenizer.corpus import draw_sample, read_clean
from lathe.tokenizer.report import evaluate, plot_report, print_report
from lathe.tokenizer.shards import (
    new_documents,
    prepare_output,
    print_shards,
    print_task_balance,
    read_back,
    summarize_parts,
    with_digest,
    write_held_out,
    write_ledger,
    write_split_indexes,
    write_stream,
)
from lathe.tokenizer.special import PAD
from lathe.tokenizer.streams import StreamInfo, carry_over, previous_streams, print_streams, stream_name
from lathe.tokenizer.vocab import copy_tokenizer, load_tokenizer, save_tokenizer, train_bpe, vocabulary_hash


class InitFrom(Protocol):
    """The part of the `train` section the tokenizer stage reads."""

    init_from: str | None  # the model a retrain continues from: its vocabulary is kept


class TokenizerSections(Protocol):
    """The config sections the tokenizer and shards stages read."""

    tokenizer: TokenizerConfig
    shards: ShardsConfig
    spark: SparkConfig
    train: InitFrom


def run_tokenizer(ctx: StageContext[TokenizerSections]) -> StageResult:
    """Train the vocabulary (and the ablation sizes) and write the report."""
    cfg = ctx.config.tokenizer
    # the model a retrain continues from, when it carries a vocabulary to keep (a checkpoint file has none)
    parent = None if cfg.retrain else resolve_source(ctx.config.train.init_from, ctx.out_dir / "parent")
    if parent is not None and not (parent.path / "tokenizer.json").is_file():
        parent = None
    reuse = parent is not None
    spark = spark_session(ctx.config.spark, "lathe-tokenizer")
    texts, heldout = draw_sample(read_clean(spark, ctx.inputs["data"].path("clean")), cfg, training=not reuse)
    if not heldout:
        raise InputError("no held-out files for the tokenizer report; raise tokenizer.heldout_fraction")
    if parent is not None:
        # The model training continues from keeps its token ids: copy its vocabulary, train none.
        copy_tokenizer(parent.path, ctx.out_dir)
        shutil.rmtree(ctx.out_dir / "parent")
        tok = load_tokenizer(ctx.out_dir)
        if tok.get_vocab_size() != cfg.vocab_size:
            raise InputError(
                f"{parent.ref} has a {tok.get_vocab_size():,}-token vocabulary but tokenizer.vocab_size is "
                f"{cfg.vocab_size:,}; set tokenizer.vocab_size={tok.get_vocab_size()} to continue it, or "
                "tokenizer.retrain=true to train a new one (training then starts from scratch)"
            )
        ctx.console.print(f"reusing the vocabulary of {parent.ref} (version {parent.version or '-'}); held out {len(heldout):,}")
    else:
        ctx.console.print(f"training BPE {cfg.vocab_size:,} on {len(texts):,} files; held out {len(heldout):,}")
        tok = train_bpe(texts, cfg.vocab_size, cfg.reserved_sentinels, cfg.min_frequency)
        if tok.get_vocab_size() != cfg.vocab_size:
            raise InputError(
                f"the sample ({len(texts):,} files) supports only {tok.get_vocab_size():,} tokens, not "
                f"tokenizer.vocab_size={cfg.vocab_size:,}; lower it or sample more data"
            )
    main = evaluate(tok, heldout)
    ablation = [main]
    for size in sorted(set(cfg.ablation_vocab_sizes) - {cfg.vocab_size}) if not reuse else []:
        ablation.append(evaluate(train_bpe(texts, size, cfg.reserved_sentinels, cfg.min_frequency), heldout))
    report: dict[str, Any] = {
        "sample_files": len(texts),
        "sample_bytes": sum(len(t.encode("utf-8")) for t in texts),
        "main": main,
        "ablation": [{k: r[k] for k in ("vocab_size", "bytes_per_token", "vocab_used_share")} for r in ablation],
    }
    files = sorted(ctx.out_dir.glob("*.json")) if reuse else save_tokenizer(tok, ctx.out_dir)
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
        details={
            "tokenizer": str(ctx.out_dir / "tokenizer.json"),
            "vocabulary": vocabulary_hash(ctx.out_dir),
            "reused_from": parent.ref if parent else None,
            "parent_version": parent.version if parent else "",
        },
    )


def tokenizer_headline(manifest: dict[str, Any]) -> str:
    """Vocabulary size and version, compression and round trip, and where it came from."""
    m, d = manifest["metrics"], manifest.get("details") or {}
    origin = f"; reused from v{d['parent_version']}" if d.get("reused_from") else ""
    return (
        f"vocab {manifest['counts']['vocab_size']:,} ({d.get('vocabulary', '?')}), {m['bytes_per_token']:.2f} bytes/token, "
        f"round trip {m['round_trip_rate']:.0%}{origin}"
    )


TOKENIZER: Stage[Any] = Stage(
    name="tokenizer",
    inputs=("data",),
    section=lambda cfg: cfg.tokenizer,
    run=run_tokenizer,
    outputs={"tokenizer": ".", "report": "report.json"},  # "." : the folder AutoTokenizer loads
    summarize=json_summary("report.json", print_report),
    headline=tokenizer_headline,
)


def run_shards(ctx: StageContext[TokenizerSections]) -> StageResult:
    """Tokenize, FIM-transform and pack the documents no earlier stream holds into a new stream of
    train/val MDS shards beside the earlier ones, then read it back."""
    cfg = ctx.config.shards
    tokenizer_dir = ctx.inputs["tokenizer"].path("tokenizer")
    tok = load_tokenizer(tokenizer_dir, ctx.config.tokenizer.vocab_size)
    vocabulary = vocabulary_hash(tokenizer_dir)
    root = (cfg.output or ctx.outputs["mds"]).rstrip("/")
    earlier, why_not = previous_streams(ctx.previous, vocabulary, cfg.model_dump(mode="json"), SHARDS.version)
    prepare_output(root, keep=[s.name for s in earlier])
    earlier = carry_over(earlier, root)
    ctx.console.print(f"{len(earlier)} earlier stream(s) kept" if earlier else f"one stream of every document ({why_not})")
    spark = spark_session(ctx.config.spark, "lathe-shards")
    docs = new_documents(spark, with_digest(read_clean(spark, ctx.inputs["data"].path("clean"))), earlier).localCheckpoint()
    snapshot = ctx.inputs["data"].details.get("snapshot")
    new = stream_name(len(earlier), ctx.fingerprint or "manual") if docs.limit(1).count() else None
    streams, totals, first = list(earlier), summarize_parts([]), np.zeros(0)
    if new is not None:
        uri = f"{root}/{new}"
        written = write_stream(docs, tok.to_str(), uri, cfg, tok.get_vocab_size(), tok.token_to_id(PAD))
        totals = summarize_parts(written)
        if totals["train"].docs == 0 and not earlier:
            raise InputError("the train split is empty; add data or lower shards.val_fraction")
        write_split_indexes(uri, written)
        print_task_balance(written, ctx.console)
        stats = [{k: v for k, v in r.items() if k != "shards"} for r in written]
        for split, total in totals.items():
            if not total.docs:
                continue
            samples, tokens, head = read_back(f"{uri}/{split}", ctx.out_dir / "cache" / new / split)
            if (samples, tokens) != (total.samples, total.tokens + total.padding):
                raise LatheError(
                    f"{split} shards of stream {new} read back {samples} samples / {tokens} tokens but {total.samples} / "
                    f"{total.tokens + total.padding} were written; rerun `lathe run shards --force`"
                )
            first = head if split == "train" else first
        write_ledger(docs, uri)
        write_held_out(docs, uri, cfg.val_fraction)
        streams.append(
            StreamInfo(
                name=new,
                uri=uri,
                snapshot=snapshot,
                docs=totals["train"].docs + totals["val"].docs,
                train_samples=totals["train"].samples,
                train_tokens=totals["train"].tokens,
                val_samples=totals["val"].samples,
                val_tokens=totals["val"].tokens,
            )
        )
    else:
        ctx.console.print("no document is new since the earlier streams: no new stream")
    if not any(s.val_samples for s in streams):
        raise InputError("the val split is empty; add data or raise shards.val_fraction")
    sample_text = tok.decode(first.tolist(), skip_special_tokens=False)
    print_streams(streams, new, ctx.console)
    if new is not None:
        print_shards(totals, cfg, sample_text, ctx.console)
    counts = {
        f"{s}.{k}": int(getattr(t, k)) for s, t in totals.items() for k in ("docs", "fim_docs", "samples", "tokens", "padding")
    }
    counts.update(
        {
            "streams": len(streams),
            "all.train.tokens": sum(s.train_tokens for s in streams),
            "all.val.tokens": sum(s.val_tokens for s in streams),
        }
    )
    return StageResult(
        counts=counts,
        metrics={"fim_share": sum(t.fim_docs for t in totals.values()) / max(sum(t.docs for t in totals.values()), 1)},
        details={
            "output": root,
            "seq_len": cfg.seq_len,
            "vocab_size": tok.get_vocab_size(),
            "sample": sample_text[:1000],
            "data_snapshot": snapshot,
            "vocabulary": vocabulary,
            "new_stream": new,
            "streams": [s.model_dump(mode="json") for s in streams],
            "parts": sorted(stats, key=lambda r: (r["split"], r["part"])) if new else [],
        },
        outputs={"mds": root},
    )


def summarize_shards_stage(out_dir: Path, console: Console) -> None:
    """Reprint the summary of a finished shards stage from its manifest."""
    manifest = json.loads((out_dir / "manifest.json").read_text())
    cfg = ShardsConfig.model_validate(manifest["config"])
    totals = summarize_parts(manifest["details"]["parts"])
    details = manifest["details"]
    print_streams([StreamInfo.model_validate(s) for s in details.get("streams", [])], details.get("new_stream"), console)
    if details.get("new_stream"):
        print_shards(totals, cfg, details["sample"], console)


def shards_headline(manifest: dict[str, Any]) -> str:
    """The new stream's tokens per split, and the streams in all."""
    c = manifest["counts"]
    new = (manifest.get("details") or {}).get("new_stream")
    head = (
        f"new stream {new}: train {c.get('train.tokens', 0):,}, val {c.get('val.tokens', 0):,} tokens" if new else "no new stream"
    )
    return f"{head}; {c.get('streams', 1)} stream(s), {c.get('all.train.tokens', 0):,} train tokens in all"


SHARDS: Stage[Any] = Stage(
    name="shards",
    inputs=("data", "tokenizer"),
    section=lambda cfg: cfg.shards,
    run=run_shards,
    outputs={"mds": "mds"},  # mds/<stream>/{train,val}; shards.output puts them elsewhere (an object store)
    summarize=summarize_shards_stage,
    headline=shards_headline,
    version="3",  # 2: one stream per data snapshot; 3: a long FIM document is cut into context-sized examples
    incremental=True,  # the earlier streams are kept and a new one holds the new documents
)
