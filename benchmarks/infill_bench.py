"""The product's own task offline: HumanEval infilling (single-line, 1,033 tasks; multi-line, 5,815) scored in
lathe's sandbox, a model's figures beside the trivial floors computed by the same code (an empty middle;
the line above copied), and held-out bits per byte beside gzip -9 and xz -9e on the same bytes.

    .venv/bin/python benchmarks/infill_bench.py                         # the floors on both full sets
    .venv/bin/python benchmarks/infill_bench.py --model runs/tiny/train/hf_model --tasks 200 \\
        --documents runs/tiny/data/kept                                 # a model beside them

A model is measured on a seeded subset of each set (``--tasks``; 0: all), in PSM and SPM order; the floors on
the same tasks. Bits per byte: ``--documents`` is a parquet folder with a ``content`` column (a profile's kept
data); the first ``--docs`` documents in id order, each compressed on its own.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit
from lathe.eval.bpb import bpb_report
from lathe.eval.config import EvalConfig
from lathe.eval.infilling import (
    FLOORS,
    MULTI_LINE,
    SINGLE_LINE,
    floor_samples,
    generate_middles,
    infilling_tasks,
    score_infilling,
    task_subset,
)

FIGURES = ("pass@1", "exact_match", "edit_similarity", "ended")


def figures(scored: dict[str, Any]) -> dict[str, float]:
    """The headline figures of one scoring."""
    return {k: round(float(scored[k]), 4) for k in FIGURES if k in scored}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="HF model directory to measure beside the floors")
    parser.add_argument("--tasks", type=int, default=0, help="seeded subset of each set for the model (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--documents", type=Path, help="parquet folder of held-out documents (column `content`)")
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/infill.json"))
    args = parser.parse_args()
    cfg = EvalConfig(ks=[1], workers=2)
    report: dict[str, Any] = {}
    for name in (SINGLE_LINE, MULTI_LINE):
        tasks = infilling_tasks(name)
        chosen = task_subset(tasks, args.tasks, args.seed) if args.model and args.tasks else tasks
        for floor in FLOORS:
            started = time.perf_counter()
            report[f"{name}/{floor}"] = figures(score_infilling(floor_samples(chosen, floor), chosen, cfg))
            report[f"{name}/{floor}/seconds"] = round(time.perf_counter() - started, 1)
        report[f"{name}/tasks"] = len(chosen)
        if args.model:
            for mode in ("psm", "spm"):
                started = time.perf_counter()
                middles = generate_middles(args.model, chosen, mode, args.max_new_tokens)
                report[f"{name}/model/{mode}"] = figures(score_infilling(middles, chosen, cfg))
                report[f"{name}/model/{mode}/seconds"] = round(time.perf_counter() - started, 1)
    if args.model and args.documents:
        import pandas as pd

        kept = pd.read_parquet(args.documents, columns=["id", "content"]).sort_values("id").head(args.docs)
        report["bits_per_byte"] = bpb_report(args.model, list(kept["content"]))
    emit(report, args.out)


if __name__ == "__main__":
    main()
