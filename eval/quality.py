"""Completion quality measured on every candidate, and on production for the gate: infilling at a cursor
(a fixed, seeded subset of HumanEval single-line infilling, in each FIM mode, beside the trivial floors)
and bits per byte on held-out documents beside gzip and xz.

Both are measured item by item (task, document) so the gate can pair the candidate's items with
production's on the same items (:class:`lathe.eval.gate.Paired`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lathe.core.errors import InputError
from lathe.core.fim import FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX
from lathe.eval.bpb import COMPRESSORS, compressed_bits_per_byte, document_losses, model_bits_per_byte, packed_documents
from lathe.eval.config import BitsPerByteConfig, EvalConfig, GateConfig
from lathe.eval.gate import Paired, paired_interval
from lathe.eval.infilling import (
    FLOORS,
    SINGLE_LINE,
    InfillingTask,
    floor_samples,
    generate_middles,
    infilling_tasks,
    score_infilling,
    task_subset,
)
from lathe.tokenizer.mds import read_samples

INFILL_FIGURES = ("pass@1", "exact_match", "edit_similarity", "ended")
# figure name -> the bits-per-byte report's key
BPB_FIGURES = {"bits_per_byte": "model", "gzip_bits_per_byte": "gzip-9", "xz_bits_per_byte": "xz-9e"}


def infilling_subset(cfg: EvalConfig) -> list[InfillingTask]:
    """The single-line tasks every model is measured on (``eval.infilling.tasks`` of them, by its seed)."""
    return task_subset(infilling_tasks(SINGLE_LINE), cfg.infilling.tasks, cfg.infilling.seed)


def _scored(samples: list[dict[str, Any]], tasks: list[InfillingTask], cfg: EvalConfig) -> dict[str, Any]:
    """The figures of one set of middles and its per-task results (one sample per task, in task order)."""
    # pass@1 whatever eval.ks says: one greedy middle per task
    scored = score_infilling(samples, tasks, cfg.model_copy(update={"ks": [1]}))
    return {k: scored[k] for k in INFILL_FIGURES} | {
        "results": [
            {k: r[k] for k in ("task_id", "passed", "exact_match", "edit_similarity", "ended")} | {"completion": s["completion"]}
            for s, r in zip(samples, scored["results"])
        ]
    }


def measure_infilling(model_dir: Path, tasks: list[InfillingTask], cfg: EvalConfig) -> dict[str, Any]:
    """Greedy middles of the model in each of ``eval.infilling.modes``, scored: per mode the figures and results."""
    modes: dict[str, Any] = {}
    for mode in cfg.infilling.modes:
        samples = generate_middles(model_dir, tasks, mode, cfg.infilling.max_new_tokens, cfg.generation.batch_size)
        modes[mode] = _scored(samples, tasks, cfg)
    return modes


def infilling_floors(tasks: list[InfillingTask], cfg: EvalConfig) -> dict[str, Any]:
    """The trivial middles (empty, the line above) on the same tasks, scored by the same code."""
    return {floor: _scored(floor_samples(tasks, floor), tasks, cfg) for floor in FLOORS}


def held_out_documents(trained: dict[str, Any], model_dir: Path, cfg: BitsPerByteConfig) -> tuple[list[str], str | None]:
    """Held-out documents as written: the new data's validation split (the streams the trainer's summary names
    under ``validation.val``), decoded from its shards with the model's vocabulary, FIM-transformed documents
    left out, the first in the split's seeded order up to ``cfg.documents`` and ``cfg.max_bytes``.
    Returns the documents, or none and why."""
    from transformers import AutoTokenizer

    streams = list((trained.get("validation") or {}).get("val") or [])
    if not streams:
        return [], "the trainer's summary names no validation stream (a tuned model's held-out pairs are not documents)"
    remote = [u for u in streams if "://" in u]
    if remote:
        return [], f"validation stream {remote[0]} is in an object store; only local streams are read back"
    splits = [f"{u}/val" for u in streams]
    missing = [s for s in splits if not os.path.isfile(os.path.join(s, "index.json"))]
    if missing:
        return [], f"validation split {missing[0]} is gone"
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    vocab = tok.get_vocab()
    if tok.eos_token_id is None or tok.pad_token_id is None:
        return [], f"{model_dir}: the tokenizer has no end-of-text or pad token to cut the packed samples with"
    sentinels = [vocab[t] for t in (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD) if t in vocab]
    documents: list[str] = []
    taken = 0
    for split in splits:
        for ids in packed_documents(read_samples(split), int(tok.eos_token_id), int(tok.pad_token_id), sentinels):
            text = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if not text:
                continue
            documents.append(text)
            taken += len(text.encode("utf-8"))
            if len(documents) >= cfg.documents or taken >= cfg.max_bytes:
                return documents, None
    return (documents, None) if documents else ([], "the validation split holds no document without the FIM transform")


def measure_bits_per_byte(model_dir: Path, documents: Sequence[str], batch_size: int) -> dict[str, Any]:
    """The model's bits per byte and each compressor's on the same documents, with the model's bits per document."""
    losses = document_losses(model_dir, documents, batch_size=batch_size)
    kept = [d for d in documents if d]
    return {
        "model": model_bits_per_byte(losses),
        **{name: compressed_bits_per_byte(kept, name) for name in COMPRESSORS},
        "documents": len(losses),
        "bytes": sum(d.bytes for d in losses),
        "tokens": sum(d.tokens for d in losses),
        # per document, in order: what the gate pairs with production's bits on the same bytes
        "document_bits": [d.nats / math.log(2) for d in losses],
        "document_bytes": [d.bytes for d in losses],
    }


def measure_quality(model_dir: Path, tasks: list[InfillingTask], documents: Sequence[str], cfg: EvalConfig) -> dict[str, Any]:
    """Infilling per mode (or why it was skipped) and bits per byte (when there are documents) of one model."""
    quality: dict[str, Any] = {}
    if tasks:
        try:
            quality["infilling"] = measure_infilling(model_dir, tasks, cfg)
        except InputError as exc:  # a vocabulary without FIM sentinels: nothing to measure, and say so
            quality["infilling"] = {"skipped": str(exc)}
    if documents:
        quality["bits_per_byte"] = measure_bits_per_byte(model_dir, documents, cfg.generation.batch_size)
    return quality


def quality_figures(quality: dict[str, Any]) -> dict[str, float]:
    """The model's figures by name: ``infill/<mode>/<figure>``, ``bits_per_byte`` and the compressors' beside it."""
    figures = {
        f"infill/{mode}/{k}": float(m[k])
        for mode, m in (quality.get("infilling") or {}).items()
        if mode != "skipped"
        for k in INFILL_FIGURES
    }
    bpb = quality.get("bits_per_byte") or {}
    if "model" in bpb:
        figures |= {name: float(bpb[key]) for name, key in BPB_FIGURES.items()}
    return figures


def floor_figures(floors: dict[str, Any]) -> dict[str, float]:
    """The floors' figures by name (``infill/floor/<floor>/<figure>``): for MLflow beside the model's, never gated."""
    return {f"infill/floor/{floor}/{k}": float(f[k]) for floor, f in floors.items() for k in INFILL_FIGURES}


def paired_figures(candidate: dict[str, Any], production: dict[str, Any], gate: GateConfig) -> dict[str, Paired]:
    """The gate's item-by-item comparisons where both models were measured: infilling pass@1 and edit similarity
    per mode (per task), bits per byte (per document, weighed by its bytes; lower is better)."""
    paired: dict[str, Paired] = {}
    ours, theirs = candidate.get("infilling") or {}, production.get("infilling") or {}
    for mode in [m for m in ours if m in theirs and m != "skipped"]:
        a, b = ours[mode]["results"], theirs[mode]["results"]
        if [r["task_id"] for r in a] != [r["task_id"] for r in b]:
            raise InputError(f"infilling {mode}: the candidate and production were measured on different tasks")
        paired[f"infill/{mode}/pass@1"] = Paired(
            [float(r["passed"]) for r in a], [float(r["passed"]) for r in b], True, gate.max_infill_pass_drop
        )
        paired[f"infill/{mode}/edit_similarity"] = Paired(
            [r["edit_similarity"] for r in a], [r["edit_similarity"] for r in b], True, gate.max_infill_edit_similarity_drop
        )
    ours_bpb, theirs_bpb = candidate.get("bits_per_byte") or {}, production.get("bits_per_byte") or {}
    if "document_bits" in ours_bpb and "document_bits" in theirs_bpb:
        if ours_bpb["document_bytes"] != theirs_bpb["document_bytes"]:
            raise InputError("bits per byte: the candidate and production were measured on different documents")
        paired["bits_per_byte"] = Paired(
            ours_bpb["document_bits"],
            theirs_bpb["document_bits"],
            False,
            gate.max_bits_per_byte_increase,
            weights=ours_bpb["document_bytes"],
        )
    return paired


def quality_summary(quality: dict[str, Any]) -> dict[str, Any]:
    """A model's quality figures without the per-item lists (what the gate's section keeps of production)."""
    out: dict[str, Any] = {}
    for part, value in quality.items():
        if part == "infilling":
            out[part] = {
                mode: {k: v for k, v in m.items() if k != "results"} if isinstance(m, dict) else m for mode, m in value.items()
            }
        else:
            out[part] = {k: v for k, v in value.items() if not k.startswith("document_")}
    return out


def paired_summary(paired: dict[str, Paired], gate: GateConfig) -> dict[str, dict[str, Any]]:
    """Each paired figure as the report shows it: both models' figures, the interval of the difference, the margin."""
    out = {}
    for name, p in paired.items():
        ours, theirs = p.figures()
        low, high = paired_interval(p, gate.confidence, gate.bootstrap_resamples)
        out[name] = {
            "candidate": ours,
            "production": theirs,
            "interval": [low, high],
            "margin": p.margin,
            "higher_is_better": p.higher_is_better,
            "items": len(p.candidate),
        }
    return out


def _rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, figures) rows of the infilling table: each mode, production's modes when measured, then the floors."""
    infilling = report.get("infilling") or {}
    rows = [(mode, m) for mode, m in (infilling.get("modes") or {}).items()]
    production = ((report.get("gate") or {}).get("production_quality") or {}).get("infilling") or {}
    rows += [(f"production {mode}", m) for mode, m in production.items() if mode != "skipped"]
    rows += [(f"floor: {floor}", f) for floor, f in (infilling.get("floors") or {}).items()]
    return rows


def _bpb_line(report: dict[str, Any]) -> str | None:
    bpb = report.get("bits_per_byte")
    if not bpb:
        return None
    if "skipped" in bpb:
        return f"bits per byte: skipped ({bpb['skipped']})"
    prod = ((report.get("gate") or {}).get("production_quality") or {}).get("bits_per_byte") or {}
    beside = f", production {prod['model']:.3f}" if "model" in prod else ""
    return (
        f"bits per byte: model {bpb['model']:.3f}{beside}, gzip -9 {bpb['gzip-9']:.3f}, xz -9e {bpb['xz-9e']:.3f} "
        f"on {bpb['documents']} held-out documents ({bpb['bytes']:,} bytes)"
    )


def quality_markdown(report: dict[str, Any]) -> list[str]:
    """report.md's section: the infilling table (modes, production's, floors) and the bits-per-byte line."""
    lines: list[str] = []
    infilling = report.get("infilling")
    if infilling and "skipped" in infilling:
        lines += ["## Infilling", "", f"skipped: {infilling['skipped']}", ""]
    elif infilling:
        lines += [
            f"## Infilling ({infilling['tasks']} single-line tasks, seed {infilling['seed']})",
            "",
            "| | pass@1 | exact match | edit similarity | ended |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {label} | {f['pass@1']:.4f} | {f['exact_match']:.4f} | {f['edit_similarity']:.1f} | {f['ended']:.2f} |"
            for label, f in _rows(report)
        ]
        lines.append("")
    if line := _bpb_line(report):
        lines += [line, ""]
    return lines


def print_quality(report: dict[str, Any], console: Console) -> None:
    """The infilling table and the bits-per-byte line on the console."""
    infilling = report.get("infilling")
    if infilling and "skipped" in infilling:
        console.print(f"infilling: skipped ({infilling['skipped']})")
    elif infilling:
        table = Table(title=f"infilling: {infilling['tasks']} single-line tasks", title_justify="left")
        for col in ("", "pass@1", "exact match", "edit sim", "ended"):
            table.add_column(col, justify="left" if not col else "right")
        for label, f in _rows(report):
            table.add_row(
                label, f"{f['pass@1']:.3f}", f"{f['exact_match']:.3f}", f"{f['edit_similarity']:.1f}", f"{f['ended']:.2f}"
            )
        console.print(table)
    if line := _bpb_line(report):
        console.print(line)
