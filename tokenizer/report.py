"""The tokenizer report: round trip, bytes per token per language, vocabulary use, ablation."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from tokenizers import Tokenizer

from lathe.core.plots import pyplot


def evaluate(tok: Tokenizer, docs: list[tuple[str, str, str]]) -> dict[str, Any]:
    """Round trip and compression of ``tok`` on held-out (path, lang, content) documents."""
    encodings = tok.encode_batch([content for _, _, content in docs], add_special_tokens=False)
    failures, used = [], set()
    by_lang: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # files, bytes, tokens
    for (path, lang, content), enc in zip(docs, encodings):
        if tok.decode(enc.ids, skip_special_tokens=False) != content:
            failures.append(path)
        used.update(enc.ids)
        stats = by_lang[lang]
        stats[0] += 1
        stats[1] += len(content.encode("utf-8"))
        stats[2] += len(enc.ids)
    total_bytes = sum(s[1] for s in by_lang.values())
    total_tokens = sum(s[2] for s in by_lang.values())
    return {
        "vocab_size": tok.get_vocab_size(),
        "heldout_files": len(docs),
        "round_trip_failures": len(failures),
        "round_trip_failed_paths": failures[:20],
        "round_trip_rate": 1.0 - len(failures) / max(len(docs), 1),
        "bytes_per_token": total_bytes / max(total_tokens, 1),
        "vocab_used_share": len(used) / tok.get_vocab_size(),
        "languages": {
            lang: {"files": s[0], "bytes": s[1], "tokens": s[2], "bytes_per_token": s[1] / max(s[2], 1)}
            for lang, s in sorted(by_lang.items(), key=lambda kv: -kv[1][1])
        },
    }


def plot_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Bytes/token per language and the vocabulary-size ablation, as PNG."""
    plt = pyplot()
    langs = list(report["main"]["languages"].items())[:12]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([lang for lang, _ in langs], [s["bytes_per_token"] for _, s in langs])
    ax.set_ylabel("bytes per token (held-out)")
    ax.set_title(f"Compression by language, vocabulary {report['main']['vocab_size']}")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    first = out_dir / "bytes_per_token.png"
    fig.savefig(first, dpi=100)
    plt.close(fig)

    sizes = sorted(report["ablation"], key=lambda r: r["vocab_size"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["vocab_size"] for r in sizes], [r["bytes_per_token"] for r in sizes], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("vocabulary size")
    ax.set_ylabel("bytes per token (held-out)")
    ax.set_title("Vocabulary size ablation (same sample)")
    fig.tight_layout()
    second = out_dir / "vocab_ablation.png"
    fig.savefig(second, dpi=100)
    plt.close(fig)
    return [first, second]


def print_report(report: dict[str, Any], console: Console) -> None:
    """The report on one screen."""
    main = report["main"]
    console.print(
        f"[bold]tokenizer[/]: vocabulary {main['vocab_size']:,}, trained on {report['sample_files']:,} files "
        f"({report['sample_bytes'] / 1e6:,.1f} MB); held-out {main['heldout_files']:,} files: round trip "
        f"{main['round_trip_rate']:.2%}, {main['bytes_per_token']:.2f} bytes/token, "
        f"{main['vocab_used_share']:.1%} of the vocabulary used"
    )
    table = Table(title="bytes per token by language (held-out)")
    for col in ["lang", "files", "MB", "bytes/token"]:
        table.add_column(col, justify="left" if col == "lang" else "right")
    for lang, s in list(main["languages"].items())[:10]:
        table.add_row(lang, f"{s['files']:,}", f"{s['bytes'] / 1e6:.2f}", f"{s['bytes_per_token']:.2f}")
    console.print(table)
    console.print(
        "ablation: "
        + ", ".join(
            f"{r['vocab_size']:,} -> {r['bytes_per_token']:.2f} B/tok"
            for r in sorted(report["ablation"], key=lambda r: r["vocab_size"])
        )
    )
