"""The one-screen summary of a profile's run, read from the stage manifests (nothing recomputed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipelines.runner import MANIFEST


def _manifest(profile_dir: Path, stage: str) -> dict[str, Any]:
    path = profile_dir / stage / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def summary_rows(profile_dir: Path) -> list[tuple[str, str, str]]:
    """(stage, headline figures, where its artifacts are) for every finished stage."""
    rows: list[tuple[str, str, str]] = []
    m = _manifest(profile_dir, "data")
    if m:
        drops = sorted(((k.split(".", 1)[1], int(v)) for k, v in m["metrics"].items() if k.startswith("dropped.") and v), key=lambda x: -x[1])
        rows.append(("data", f"{m['counts']['input']:,} files in, {m['counts']['kept']:,} kept; dropped "
                     + ", ".join(f"{k} {v}" for k, v in drops[:4]), str(profile_dir / "data")))
    m = _manifest(profile_dir, "tokenizer")
    if m:
        rows.append(("tokenizer", f"vocab {m['counts']['vocab_size']:,}, {m['metrics']['bytes_per_token']:.2f} bytes/token, "
                     f"round trip {m['metrics']['round_trip_rate']:.0%}", str(profile_dir / "tokenizer")))
    m = _manifest(profile_dir, "shards")
    if m:
        counts = ", ".join(f"{k} {v:,}" for k, v in m["counts"].items() if "token" in k)
        rows.append(("shards", counts or "written", str(profile_dir / "shards")))
    m = _manifest(profile_dir, "train")
    if m:
        rows.append(("train", f"{m['counts']['parameters'] / 1e6:.1f}M params, {m['counts']['tokens']:,} tokens, val loss "
                     f"{m['metrics']['initial_val_loss']:.2f} -> {m['metrics']['final_val_loss']:.2f}", str(profile_dir / "train" / "hf_model")))
    m = _manifest(profile_dir, "eval")
    if m:
        ks = ", ".join(f"{k.replace('_at_', '@')} {v:.3f}" for k, v in m["metrics"].items() if k.startswith("pass"))
        gate = (m.get("details") or {}).get("gate") or {}
        verdict = f"gate {'passed' if gate.get('passed') else 'FAILED'} for v{gate.get('candidate_version')}" if gate else "no gate"
        rows.append(("eval", f"{ks}; {verdict}", str(profile_dir / "eval" / "report.md")))
    m = _manifest(profile_dir, "package")
    if m:
        d = m["details"]
        rows.append(("package", f"{d['model']} v{d['version']} (@{d['track']})", d["repository"]))
    m = _manifest(profile_dir, "canary")
    if m:
        mt = m["metrics"]
        rows.append(("serving", f"first token p50 {mt['ttft_p50_s'] * 1000:.0f} ms, latency p50 {mt['latency_p50_s'] * 1000:.0f} ms / "
                     f"p95 {mt['latency_p95_s'] * 1000:.0f} ms, {m['counts']['requests']} requests, {m['counts']['failures']} failed",
                     str(profile_dir / "canary" / "canary.json")))
    return rows


def print_summary(profile_dir: Path, console: Console, extra: list[tuple[str, str, str]] | None = None) -> None:
    """The table, then the canary's completion."""
    table = Table(title=f"lathe: {profile_dir.name}", show_lines=False)
    for col in ("stage", "result", "artifacts"):
        table.add_column(col, overflow="fold")
    for row in [*summary_rows(profile_dir), *(extra or [])]:
        table.add_row(*row)
    console.print(table)
    canary = profile_dir / "canary" / "canary.json"
    if canary.is_file():
        c = json.loads(canary.read_text())
        console.print(f"Triton answered {c['prompt']!r} with {c['completion']!r}", highlight=False)
