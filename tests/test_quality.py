"""The eval stage's quality pieces without a model: the task subset, documents read back from packed shards,
the gate's pairs, the figures' names and the report's table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from lathe.core.errors import InputError
from lathe.eval.bpb import packed_documents
from lathe.eval.config import GateConfig
from lathe.eval.infilling import single_line_tasks, task_subset
from lathe.eval.quality import (
    floor_figures,
    paired_figures,
    paired_summary,
    print_quality,
    quality_figures,
    quality_markdown,
    quality_summary,
)
from lathe.tokenizer.mds import Codec, ShardWriter, read_samples
from lathe.tokenizer.pack import Packer

EOS, PAD, FIM = 0, 1, 2


def test_the_subset_is_fixed_by_its_seed_and_keeps_the_sets_order() -> None:
    tasks = single_line_tasks()
    first, again, other = task_subset(tasks, 48, 0), task_subset(tasks, 48, 0), task_subset(tasks, 48, 1)
    assert first == again != other and len(first) == 48 and len({t.task_id for t in first}) == 48
    order = {t.task_id: i for i, t in enumerate(tasks)}
    assert [order[t.task_id] for t in first] == sorted(order[t.task_id] for t in first)
    assert task_subset(tasks[:5], 48, 0) == tasks[:5]


def test_packed_documents_come_back_whole_across_samples_and_parts(tmp_path: Path) -> None:
    docs = [[10, 11, 12], [20, FIM, 21], [30] * 9, [40, 41], [50]]
    # two writer parts, as the shards stage writes them: each its own packer, its last sample padded
    samples = []
    for part in (docs[:3], docs[3:]):
        packer = Packer(4, PAD)
        for d in part:
            samples += packer.add([*d, EOS])
        samples += packer.finish()
    writer = ShardWriter(str(tmp_path), "tokens", np.uint16, 4, Codec.parse("zstd"), 64)
    for s in samples:
        writer.write(s)
    writer.finish()
    read = list(read_samples(str(tmp_path)))
    assert len(read) == len(samples) and all((a == b).all() for a, b in zip(read, samples))
    # the FIM-transformed document is left out, every other one comes back as written
    assert list(packed_documents(read, EOS, PAD, [FIM])) == [docs[0], docs[2], docs[3], docs[4]]
    assert list(packed_documents([[5, 6, EOS, 7, 8]], EOS, PAD)) == [[5, 6]]  # an unfinished document is not one


def _mode(passed: list[bool], similarity: list[float], ids: list[str]) -> dict:
    results = [
        {"task_id": i, "passed": p, "edit_similarity": e, "exact_match": False, "ended": True, "completion": ""}
        for i, p, e in zip(ids, passed, similarity)
    ]
    return {
        "pass@1": float(np.mean(passed)),
        "exact_match": 0.0,
        "edit_similarity": float(np.mean(similarity)),
        "ended": 1.0,
        "results": results,
    }


def _bpb(model: float, bits: list[float], by_language: dict[str, float]) -> dict:
    counts = {"documents": 1, "bytes": 20, "tokens": 5}
    return {
        "model": model,
        "gzip-9": 3.0,
        "xz-9e": 2.8,
        "documents": 2,
        "bytes": 40,
        "tokens": 10,
        "languages": {lang: {"model": m, "gzip-9": 3.1, "xz-9e": 2.9, **counts} for lang, m in by_language.items()},
        "document_bits": bits,
        "document_bytes": [10, 30],
        "document_languages": ["c", "python"],
    }


def _lines(em: float, es: float) -> dict:
    per = {"tasks": 1, "exact_match": em, "edit_similarity": es}
    return {"tasks": 2, "exact_match": em, "edit_similarity": es, "languages": {"c": per, "python": per}, "results": [{}]}


IDS = [f"t{i}" for i in range(6)]
CANDIDATE = {
    "infilling": {"psm": _mode([True] * 3 + [False] * 3, [80.0] * 6, IDS) | {"end_probability": 0.25}},
    "bits_per_byte": _bpb(2.0, [20.0, 60.0], {"c": 2.2, "python": 1.9}),
    "line_completion": _lines(0.5, 60.0),
}
PRODUCTION = {
    "infilling": {"psm": _mode([True] * 4 + [False] * 2, [70.0] * 6, IDS)},
    "bits_per_byte": _bpb(2.5, [25.0, 75.0], {"c": 2.6, "python": 2.4}),
    "line_completion": _lines(0.0, 40.0),
}


def test_figures_are_named_for_mlflow_and_the_gate() -> None:
    figures = quality_figures(CANDIDATE)
    assert figures == {
        "infill/psm/pass@1": 0.5,
        "infill/psm/exact_match": 0.0,
        "infill/psm/edit_similarity": 80.0,
        "infill/psm/ended": 1.0,
        "infill/psm/end_probability": 0.25,
        "bits_per_byte": 2.0,
        "gzip_bits_per_byte": 3.0,
        "xz_bits_per_byte": 2.8,
        "bits_per_byte/c": 2.2,
        "gzip_bits_per_byte/c": 3.1,
        "xz_bits_per_byte/c": 2.9,
        "bits_per_byte/python": 1.9,
        "gzip_bits_per_byte/python": 3.1,
        "xz_bits_per_byte/python": 2.9,
        "line/exact_match": 0.5,
        "line/edit_similarity": 60.0,
        "line/c/exact_match": 0.5,
        "line/c/edit_similarity": 60.0,
        "line/python/exact_match": 0.5,
        "line/python/edit_similarity": 60.0,
    }
    assert quality_figures({"infilling": {"skipped": "no FIM sentinels"}}) == {}
    assert set(floor_figures({"empty": CANDIDATE["infilling"]["psm"]})) == {
        f"infill/floor/empty/{k}" for k in ("pass@1", "exact_match", "edit_similarity", "ended")
    }


def test_the_gate_pairs_the_same_tasks_and_the_same_bytes() -> None:
    gate = GateConfig(max_infill_pass_drop=0.02, max_infill_edit_similarity_drop=1.0, max_bits_per_byte_increase=0.1)
    paired = paired_figures(CANDIDATE, PRODUCTION, gate)
    assert set(paired) == {"infill/psm/pass@1", "infill/psm/edit_similarity", "bits_per_byte"}
    assert paired["infill/psm/pass@1"].figures() == pytest.approx((0.5, 4 / 6)) and paired["infill/psm/pass@1"].margin == 0.02
    assert paired["infill/psm/edit_similarity"].higher_is_better and paired["infill/psm/edit_similarity"].margin == 1.0
    bpb = paired["bits_per_byte"]
    assert not bpb.higher_is_better and bpb.figures() == pytest.approx((2.0, 2.5)) and bpb.margin == 0.1
    summary = paired_summary(paired, gate)
    assert summary["bits_per_byte"]["items"] == 2 and summary["infill/psm/pass@1"]["candidate"] == pytest.approx(0.5)
    # production without FIM sentinels: nothing to pair on infilling, bits per byte still pairs
    assert set(paired_figures(CANDIDATE, {**PRODUCTION, "infilling": {"skipped": "x"}}, gate)) == {"bits_per_byte"}
    moved = {**PRODUCTION, "infilling": {"psm": _mode([True] * 6, [1.0] * 6, [f"u{i}" for i in range(6)])}}
    with pytest.raises(InputError, match="different tasks"):
        paired_figures(CANDIDATE, moved, gate)
    assert "results" not in quality_summary(PRODUCTION)["infilling"]["psm"]
    assert "document_bits" not in quality_summary(PRODUCTION)["bits_per_byte"]
    assert "results" not in quality_summary(PRODUCTION)["line_completion"]


def test_bits_per_byte_is_gated_per_language_with_enough_documents() -> None:
    languages = ["python"] * 3 + ["c"] * 2 + ["json"]
    bits, worse = [10.0] * 6, [10.0, 10.0, 10.0, 14.0, 14.0, 10.0]  # the candidate loses on c
    ours = {"bits_per_byte": {"document_bits": worse, "document_bytes": [10] * 6, "document_languages": languages}}
    theirs = {"bits_per_byte": {"document_bits": bits, "document_bytes": [10] * 6, "document_languages": languages}}
    paired = paired_figures(ours, theirs, GateConfig(min_language_documents=2))
    assert set(paired) == {"bits_per_byte", "bits_per_byte/python", "bits_per_byte/c"}  # json: one document, not gated
    assert paired["bits_per_byte/c"].figures() == pytest.approx((1.4, 1.0)) and paired["bits_per_byte/python"].figures() == (
        1.0,
        1.0,
    )
    assert set(paired_figures(ours, theirs, GateConfig(min_language_documents=3))) == {"bits_per_byte", "bits_per_byte/python"}
    single = {"bits_per_byte": {**theirs["bits_per_byte"], "document_languages": ["python"] * 6}}
    assert set(paired_figures(single, single, GateConfig(min_language_documents=2))) == {"bits_per_byte"}  # one language


def test_short_tables_in_the_report_and_on_the_console() -> None:
    report = {
        "infilling": {
            "tasks": 6,
            "seed": 0,
            "modes": CANDIDATE["infilling"],
            "floors": {"empty": PRODUCTION["infilling"]["psm"]},
        },
        "bits_per_byte": CANDIDATE["bits_per_byte"],
        "line_completion": {**CANDIDATE["line_completion"], "seed": 0, "floor": _lines(0.0, 25.0)},
        "gate": {"production_quality": quality_summary(PRODUCTION)},
    }
    page = "\n".join(quality_markdown(report))
    assert "| psm | 0.5000 | 0.0000 | 80.0 | 1.00 | 0.250 |" in page and "| production psm | 0.6667 |" in page
    assert "| floor: empty |" in page and page.count("| 1.00 | - |") == 2  # no end probability: production's, the floor's
    # bits per byte per language (all first): the model's, production's, gzip's and xz's on the same bytes
    assert (
        "| all | 2 | 40 | 2.000 | 2.500 | 3.000 | 2.800 |" in page
        and "| python | 1 | 20 | 1.900 | 2.400 | 3.100 | 2.900 |" in page
    )
    # line completion per language: the model's, production's and the floor's on the same cuts
    assert "| all | 2 | 0.500 | 60.0 | 0.000 | 40.0 | 25.0 |" in page and "| c | 1 | 0.500 | 60.0 | 0.000 | 40.0 | 25.0 |" in page
    console = Console(record=True, width=160)
    print_quality(report, console)
    text = console.export_text()
    assert "floor: empty" in text and "production psm" in text and "Line completion" in text and "1.900" in text
    # before the first promotion there is no production to measure: its columns say so
    alone = "\n".join(quality_markdown({k: v for k, v in report.items() if k != "gate"}))
    assert "| all | 2 | 40 | 2.000 | - | 3.000 | 2.800 |" in alone and "| all | 2 | 0.500 | 60.0 | - | - | 25.0 |" in alone
    assert quality_markdown({"bits_per_byte": {"skipped": "no validation stream"}}) == [
        "bits per byte: skipped (no validation stream)",
        "",
    ]


def test_the_summary_line_puts_each_figure_beside_its_floor() -> None:
    from lathe.eval.stage import eval_headline

    metrics = {
        "pass_at_1": 0.0,
        "bits_per_byte": 1.514,
        "gzip_bits_per_byte": 1.84,
        "infill/psm/pass_at_1": 0.03,
        "infill/psm/edit_similarity": 41.26,
        "infill/spm/edit_similarity": 38.0,
        "infill/floor/previous-line/edit_similarity": 26.03,
        "line/edit_similarity": 35.5,
    }
    manifest = {"metrics": metrics, "details": {"gate": {"passed": True, "candidate_version": "3"}}}
    assert eval_headline(manifest) == (
        "pass@1 0.000; bits/byte 1.51 (gzip 1.84); infill edit sim psm 41.3, spm 38.0 (floor 26.0); line edit sim 35.5; "
        "gate passed for v3"
    )
    assert eval_headline({"metrics": {"pass_at_1": 0.5}, "details": {}}) == "pass@1 0.500; no gate"
