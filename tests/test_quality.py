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


IDS = [f"t{i}" for i in range(6)]
CANDIDATE = {
    "infilling": {"psm": _mode([True] * 3 + [False] * 3, [80.0] * 6, IDS)},
    "bits_per_byte": {"model": 2.0, "gzip-9": 3.0, "xz-9e": 2.8, "document_bits": [20.0, 60.0], "document_bytes": [10, 30]},
}
PRODUCTION = {
    "infilling": {"psm": _mode([True] * 4 + [False] * 2, [70.0] * 6, IDS)},
    "bits_per_byte": {"model": 2.5, "gzip-9": 3.0, "xz-9e": 2.8, "document_bits": [25.0, 75.0], "document_bytes": [10, 30]},
}


def test_figures_are_named_for_mlflow_and_the_gate() -> None:
    figures = quality_figures(CANDIDATE)
    assert figures == {
        "infill/psm/pass@1": 0.5,
        "infill/psm/exact_match": 0.0,
        "infill/psm/edit_similarity": 80.0,
        "infill/psm/ended": 1.0,
        "bits_per_byte": 2.0,
        "gzip_bits_per_byte": 3.0,
        "xz_bits_per_byte": 2.8,
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


def test_one_short_table_in_the_report_and_on_the_console() -> None:
    report = {
        "infilling": {
            "tasks": 6,
            "seed": 0,
            "modes": CANDIDATE["infilling"],
            "floors": {"empty": PRODUCTION["infilling"]["psm"]},
        },
        "bits_per_byte": {**CANDIDATE["bits_per_byte"], "documents": 2, "bytes": 40},
        "gate": {"production_quality": quality_summary(PRODUCTION)},
    }
    page = "\n".join(quality_markdown(report))
    assert "| psm | 0.5000 | 0.0000 | 80.0 | 1.00 |" in page and "| production psm | 0.6667 |" in page
    assert "| floor: empty |" in page and "bits per byte: model 2.000, production 2.500, gzip -9 3.000, xz -9e 2.800" in page
    console = Console(record=True, width=120)
    print_quality(report, console)
    text = console.export_text()
    assert "floor: empty" in text and "production psm" in text and "xz -9e 2.800" in text
    assert quality_markdown({"bits_per_byte": {"skipped": "no validation stream"}}) == [
        "bits per byte: skipped (no validation stream)",
        "",
    ]
