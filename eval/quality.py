"""Completion quality measured on every candidate, and on production for the gate: infilling at a cursor
(a fixed, seeded subset of HumanEval single-line infilling, in each FIM mode, beside the trivial floors),
bits per byte on held-out documents beside gzip and xz (overall and per language), and line completion
on the same held-out documents (per language, beside its floor).

Each is measured item by item (task, document) so the gate can pair the candidate's items with
production's on the same items (:class:`lathe.eval.gate.Paired`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lathe.core.errors import InputError
from lathe.eval.bpb import COMPRESSORS, DocumentLoss, compressed_bits_per_byte, document_losses, model_bits_per_byte
from lathe.eval.config import EvalConfig, GateConfig
from lathe.eval.gate import Paired, paired_interval
from lathe.eval.held_out import HeldOutDocument
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
from lathe.eval.line_completion import FLOOR, LineTask, complete_lines, floor_completions, line_tasks, score_lines

INFILL_FIGURES = ("pass@1", "exact_match", "edit_similarity", "ended")
# a model's mean probability of closing the middle at its true end (eval/infilling.py: end_probabilities);
# the floors, which are not models, have none
END_PROBABILITY = "end_probability"
LINE_FIGURES = ("exact_match", "edit_similarity")
# figure name -> the bits-per-byte report's key
BPB_FIGURES = {"bits_per_byte": "model", "gzip_bits_per_byte": "gzip-9", "xz_bits_per_byte": "xz-9e"}


def infilling_subset(cfg: EvalConfig) -> list[InfillingTask]:
    """The single-line tasks every model is measured on (``eval.infilling.tasks`` of them, by its seed)."""
    return task_subset(infilling_tasks(SINGLE_LINE), cfg.infilling.tasks, cfg.infilling.seed)


def _scored(samples: list[dict[str, Any]], tasks: list[InfillingTask], cfg: EvalConfig) -> dict[str, Any]:
    """The figures of one set of middles and its per-task results (one sample per task, in task order)."""
    # pass@1 whatever eval.ks says: one greedy middle per task
    scored = score_infilling(samples, tasks, cfg.model_copy(update={"ks": [1]}))
    return {k: scored[k] for k in (*INFILL_FIGURES, END_PROBABILITY) if k in scored} | {
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


def _bpb_figures(losses: Sequence[DocumentLoss], texts: Sequence[str]) -> dict[str, Any]:
    """The model's and each compressor's bits per byte on the same documents."""
    return {
        "model": model_bits_per_byte(losses),
        **{name: compressed_bits_per_byte(texts, name) for name in COMPRESSORS},
        "documents": len(losses),
        "bytes": sum(d.bytes for d in losses),
        "tokens": sum(d.tokens for d in losses),
    }


def measure_bits_per_byte(model_dir: Path, documents: Sequence[HeldOutDocument], batch_size: int) -> dict[str, Any]:
    """The model's bits per byte and each compressor's on the same documents, overall and per language, with the
    model's bits per document."""
    kept = [d for d in documents if d.text]
    losses = document_losses(model_dir, [d.text for d in kept], batch_size=batch_size)
    by_language: dict[str, list[int]] = defaultdict(list)
    for i, doc in enumerate(kept):
        by_language[doc.language].append(i)
    return {
        **_bpb_figures(losses, [d.text for d in kept]),
        "languages": {
            lang: _bpb_figures([losses[i] for i in rows], [kept[i].text for i in rows])
            for lang, rows in sorted(by_language.items())
        },
        # per document, in order: what the gate pairs with production's bits on the same bytes
        "document_bits": [d.nats / math.log(2) for d in losses],
        "document_bytes": [d.bytes for d in losses],
        "document_languages": [d.language for d in kept],
    }


def measure_line_completion(model_dir: Path, tasks: Sequence[LineTask], cfg: EvalConfig) -> dict[str, Any]:
    """The model's line completions of ``tasks``, scored (overall, per language, per task)."""
    completions = complete_lines(model_dir, tasks, cfg.line_completion.max_new_tokens, cfg.generation.batch_size)
    return score_lines(tasks, completions)


def line_floor(tasks: Sequence[LineTask]) -> dict[str, Any]:
    """The previous-line floor on the same tasks, scored by the same code (without per-task results)."""
    scored = score_lines(tasks, floor_completions(tasks))
    return {k: v for k, v in scored.items() if k != "results"}


def line_subset(documents: Sequence[HeldOutDocument], cfg: EvalConfig) -> list[LineTask]:
    """The line-completion tasks every model is measured on (none when it is off)."""
    lc = cfg.line_completion
    return line_tasks(documents, lc.tasks, lc.seed) if lc.enabled else []


def measure_quality(
    model_dir: Path, tasks: list[InfillingTask], documents: Sequence[HeldOutDocument], cfg: EvalConfig
) -> dict[str, Any]:
    """Infilling per mode (or why it was skipped), bits per byte and line completion (when there are held-out
    documents) of one model."""
    quality: dict[str, Any] = {}
    if tasks:
        try:
            quality["infilling"] = measure_infilling(model_dir, tasks, cfg)
        except InputError as exc:  # a vocabulary without FIM sentinels: nothing to measure, and say so
            quality["infilling"] = {"skipped": str(exc)}
    if documents and cfg.bits_per_byte.enabled:
        quality["bits_per_byte"] = measure_bits_per_byte(model_dir, documents, cfg.generation.batch_size)
    if lines := line_subset(documents, cfg):
        quality["line_completion"] = measure_line_completion(model_dir, lines, cfg)
    return quality


def quality_figures(quality: dict[str, Any]) -> dict[str, float]:
    """The model's figures by name: ``infill/<mode>/<figure>``, ``bits_per_byte`` and the compressors' beside it
    (and ``.../<language>`` for each language), ``line/<figure>`` and ``line/<language>/<figure>``."""
    figures = {
        f"infill/{mode}/{k}": float(m[k])
        for mode, m in (quality.get("infilling") or {}).items()
        if mode != "skipped"
        for k in (*INFILL_FIGURES, END_PROBABILITY)
        if k in m
    }
    bpb = quality.get("bits_per_byte") or {}
    if "model" in bpb:
        figures |= {name: float(bpb[key]) for name, key in BPB_FIGURES.items()}
        figures |= {
            f"{name}/{lang}": float(by[key])
            for lang, by in (bpb.get("languages") or {}).items()
            for name, key in BPB_FIGURES.items()
        }
    if lines := quality.get("line_completion"):
        figures |= {f"line/{k}": float(lines[k]) for k in LINE_FIGURES}
        figures |= {f"line/{lang}/{k}": float(by[k]) for lang, by in lines["languages"].items() for k in LINE_FIGURES}
    return figures


def floor_figures(floors: dict[str, Any]) -> dict[str, float]:
    """The floors' figures by name (``infill/floor/<floor>/<figure>``): for MLflow beside the model's, never gated."""
    return {f"infill/floor/{floor}/{k}": float(f[k]) for floor, f in floors.items() for k in INFILL_FIGURES}


def paired_figures(candidate: dict[str, Any], production: dict[str, Any], gate: GateConfig) -> dict[str, Paired]:
    """The gate's item-by-item comparisons where both models were measured: infilling pass@1 and edit similarity
    per mode (per task), bits per byte (per document, weighed by its bytes; lower is better) overall and for each
    language with at least ``gate.min_language_documents`` documents (when there is more than one language)."""
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
        languages = ours_bpb.get("document_languages") or [None] * len(ours_bpb["document_bits"])
        groups: dict[str, list[int]] = {"bits_per_byte": list(range(len(languages)))}
        for lang in sorted({x for x in languages if x is not None}):
            rows = [i for i, x in enumerate(languages) if x == lang]
            if len(rows) >= gate.min_language_documents and len(rows) < len(languages):
                groups[f"bits_per_byte/{lang}"] = rows
        for name, rows in groups.items():
            paired[name] = Paired(
                [ours_bpb["document_bits"][i] for i in rows],
                [theirs_bpb["document_bits"][i] for i in rows],
                False,
                gate.max_bits_per_byte_increase,
                weights=[ours_bpb["document_bytes"][i] for i in rows],
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
            out[part] = {k: v for k, v in value.items() if not k.startswith("document_") and k != "results"}
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


def _production(report: dict[str, Any], part: str) -> dict[str, Any]:
    """Production's figures of ``part`` measured on the same items, or {}."""
    return ((report.get("gate") or {}).get("production_quality") or {}).get(part) or {}


def _infilling_rows(report: dict[str, Any]) -> list[list[str]]:
    """Each mode, production's modes when measured, then the floors."""
    infilling = report.get("infilling") or {}
    rows = [(mode, m) for mode, m in (infilling.get("modes") or {}).items()]
    rows += [(f"production {mode}", m) for mode, m in _production(report, "infilling").items() if mode != "skipped"]
    rows += [(f"floor: {floor}", f) for floor, f in (infilling.get("floors") or {}).items()]
    return [
        [
            label,
            f"{f['pass@1']:.4f}",
            f"{f['exact_match']:.4f}",
            f"{f['edit_similarity']:.1f}",
            f"{f['ended']:.2f}",
            format(f[END_PROBABILITY], ".3f") if END_PROBABILITY in f else "-",
        ]
        for label, f in rows
    ]


def _by_language(figures: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """("all", the overall figures), then each language's; none for a model not measured."""
    return [("all", figures), *(figures.get("languages") or {}).items()] if figures else []


def _beside(figures: dict[str, dict[str, Any]], lang: str, key: str, spec: str) -> str:
    """Another model's (or floor's) figure for ``lang``, formatted; "-" where it has none."""
    return format(figures[lang][key], spec) if lang in figures else "-"


def _bpb_rows(report: dict[str, Any]) -> list[list[str]]:
    """Per language (all first): documents, bytes, the model's bits per byte, production's, gzip's and xz's."""
    theirs = dict(_by_language(_production(report, "bits_per_byte")))
    return [
        [
            lang,
            str(f["documents"]),
            f"{f['bytes']:,}",
            f"{f['model']:.3f}",
            _beside(theirs, lang, "model", ".3f"),
            f"{f['gzip-9']:.3f}",
            f"{f['xz-9e']:.3f}",
        ]
        for lang, f in _by_language(report["bits_per_byte"])
    ]


def _line_rows(report: dict[str, Any]) -> list[list[str]]:
    """Per language (all first): tasks, the model's exact match and edit similarity, production's, the floor's."""
    lines = report["line_completion"]
    theirs = dict(_by_language(_production(report, "line_completion")))
    floor = dict(_by_language(lines["floor"]))
    return [
        [
            lang,
            str(f["tasks"]),
            f"{f['exact_match']:.3f}",
            f"{f['edit_similarity']:.1f}",
            _beside(theirs, lang, "exact_match", ".3f"),
            _beside(theirs, lang, "edit_similarity", ".1f"),
            _beside(floor, lang, "edit_similarity", ".1f"),
        ]
        for lang, f in _by_language(lines)
    ]


Section = tuple[str, list[str], list[list[str]]]  # title, column heads, rows


def _sections(report: dict[str, Any]) -> list[Section | str]:
    """The quality sections of a report: tables, or one line saying why a measure was skipped."""
    out: list[Section | str] = []
    infilling = report.get("infilling")
    if infilling and "skipped" in infilling:
        out.append(f"infilling: skipped ({infilling['skipped']})")
    elif infilling:
        title = f"Infilling ({infilling['tasks']} single-line tasks, seed {infilling['seed']})"
        out.append((title, ["", "pass@1", "exact match", "edit similarity", "ended", "p(end)"], _infilling_rows(report)))
    bpb = report.get("bits_per_byte")
    if bpb and "skipped" in bpb:
        out.append(f"bits per byte: skipped ({bpb['skipped']})")
    elif bpb:
        heads = ["language", "documents", "bytes", "model", "production", "gzip -9", "xz -9e"]
        out.append(("Bits per byte on held-out documents (each compressed on its own)", heads, _bpb_rows(report)))
    if lines := report.get("line_completion"):
        heads = ["language", "tasks", "exact match", "edit similarity", "production EM", "production ES", f"floor ES ({FLOOR})"]
        out.append((f"Line completion on held-out documents (seed {lines['seed']})", heads, _line_rows(report)))
    return out


def quality_markdown(report: dict[str, Any]) -> list[str]:
    """report.md's sections: infilling (modes, production's, floors), bits per byte and line completion per language."""
    lines: list[str] = []
    for section in _sections(report):
        if isinstance(section, str):
            lines += [section, ""]
            continue
        title, heads, rows = section
        lines += [f"## {title}", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    return lines


def print_quality(report: dict[str, Any], console: Console) -> None:
    """The same sections on the console."""
    for section in _sections(report):
        if isinstance(section, str):
            console.print(section)
            continue
        title, heads, rows = section
        table = Table(title=title, title_justify="left")
        for i, head in enumerate(heads):
            table.add_column(head, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
