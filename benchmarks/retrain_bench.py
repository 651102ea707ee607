"""A retrain day by day: day 1 from scratch, day 2 with about 10% new files, incremental vs full.

Run by `make bench` (never by tests: timings on shared 2-core machines are noisy):

    .venv/bin/python benchmarks/retrain_bench.py [--mb 3] [--growth 0.1] [--batches 40] [--work runs/bench/retrain]

A `tree` source of Python files (the stdlib and the venv's site-packages, a fixed shuffled
sample of --mb MB) grows by --growth of its files between two days.

1. Wall time per stage on day 1 (full) and day 2 (incremental: only the new files are
   cleaned, the vocabulary is kept, training continues from the day-1 model holding
   `production`), and the data stage's day-2 time as a ratio of a full rebuild of the same
   day-2 snapshot (goal: at most 0.3 at +10%).
2. Validation loss on day 2's new documents (the new stream's validation split), side by
   side: the production model (the continued run's loss before its first step), the
   continued model, and a model trained from scratch on the same token budget, vocabulary
   and mixture (the new stream plus train.mixture.replay of day 1's); and the same three on
   day 1's validation data, which shows what continuing forgot.
3. The customization figures on day 2's new files (the new stream's held-out documents): bits per
   byte and line completion (exact match, edit similarity) of the day-1 model (production), the
   day-2 model (continued) and the from-scratch model, beside gzip's bits per byte and the
   previous-line floor on the same bytes and cuts.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console

from benchmarks.common import emit
from lathe.core.models import PRODUCTION, ModelRegistry, resolve_model
from lathe.eval.held_out import held_out_documents
from lathe.eval.quality import line_floor, line_subset, measure_quality
from lathe.pipelines.config import load_config
from lathe.pipelines.runner import run_pipeline

ROOTS = {"stdlib": Path(sysconfig.get_paths()["stdlib"]), "site-packages": Path(sysconfig.get_paths()["purelib"])}
QUIET = Console(quiet=True)


def candidates() -> list[tuple[str, Path]]:
    """Python files of the stdlib and the venv's site-packages (tests left out), in a fixed shuffled order."""
    found = []
    for prefix, root in ROOTS.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root)
            if {"test", "tests", "site-packages"} & set(rel.parts[:-1]) or path.is_symlink():
                continue
            found.append((f"{prefix}/{rel}", path))
    return sorted(found, key=lambda item: hashlib.sha256(item[0].encode()).hexdigest())


def copy_files(files: list[tuple[str, Path]], tree: Path) -> int:
    """Copy files into the source tree under their dataset paths; the number copied."""
    for rel, src in files:
        dst = tree / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return len(files)


def config(tree: Path, runs: Path, batches: int, *extra: str):
    return load_config(
        Path("configs/tiny.yaml"),
        [
            f"run.runs_dir={runs}",
            "profile=retrain-bench",
            f"data.sources=[{{kind: tree, paths: [{tree}], repo: stdlib}}]",
            f"train.max_duration={batches}ba",
            f"train.eval_interval={batches}ba",
            f"train.save_interval={batches}ba",
            "train.wandb.enabled=false",
            *extra,
        ],
    )


def timed(cfg, stages: list[str], force: bool = False) -> dict[str, float]:
    """Run the stages; each one's wall time (0 when skipped)."""
    return {o.name: round(o.duration_s, 1) for o in run_pipeline(cfg, stages, force=force, console=QUIET)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench/retrain"))
    parser.add_argument("--batches", type=int, default=40, help="training steps per day (tiny's model, 4,096 tokens a step)")
    parser.add_argument("--mb", type=float, default=3.0, help="day 1's corpus (stdlib + site-packages .py files), MB on disk")
    parser.add_argument("--growth", type=float, default=0.1, help="day 2's new files as a share of day 1's")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/retrain_bench.json"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    tree, runs = args.work / "src", args.work / "runs"
    pool, budget, day_one = candidates(), args.mb * 1e6, []
    while pool and sum(p.stat().st_size for _, p in day_one) < budget:
        day_one.append(pool.pop(0))
    day_two = pool[: max(1, round(len(day_one) * args.growth))]
    day_one_files = copy_files(day_one, tree)
    cfg = config(tree, runs, args.batches)
    stages = ["data", "tokenizer", "shards", "train"]

    day1 = timed(cfg, stages)
    ModelRegistry(cfg.train.registered_model).set_alias(PRODUCTION, "1")
    added = copy_files(day_two, tree)
    day2 = timed(cfg, stages)
    profile = runs / cfg.profile
    continued = _summary(profile)
    new_files = {
        "day1_model": resolve_model(f"models:/{cfg.train.registered_model}/1", args.work / "cache"),
        "day2_model": _kept_model(profile, args.work / "day2_model"),
    }

    # The same day-2 snapshot cleaned from nothing, in its own runs folder.
    t0 = time.perf_counter()
    run_pipeline(config(tree, args.work / "full", args.batches), ["data"], force=True, console=QUIET)
    full_data_s = time.perf_counter() - t0

    # From scratch on the same shards and vocabulary, same token budget.
    timed(config(tree, runs, args.batches, "train.init_from=null"), ["train"], force=True)
    scratch = _summary(profile)
    new_files["scratch_model"] = profile / "train" / "hf_model"
    on_new_files = customization(continued, new_files, cfg)

    emit(
        {
            "day1_files": day_one_files,
            "day1_mb": round(sum(p.stat().st_size for _, p in day_one) / 1e6, 1),
            "day2_new_files": added,
            "day2_new_share": round(added / day_one_files, 3),
            **{f"day1_{k}_s": v for k, v in day1.items()},
            **{f"day2_{k}_s": v for k, v in day2.items()},
            "day2_data_full_rebuild_s": round(full_data_s, 1),
            "data_incremental_over_full": round(day2["data"] / full_data_s, 3),
            "tokens_per_model": continued["tokens"],
            "val_loss_production_model": round(continued["initial_val_loss"], 4),
            "val_loss_continued_model": round(continued["final_val_loss"], 4),
            "val_loss_scratch_model": round(scratch["final_val_loss"], 4),
            # on day 1's validation data (the earlier stream): what continuing forgot
            "replay_val_loss_production_model": _rounded(continued.get("initial_replay_val_loss")),
            "replay_val_loss_continued_model": _rounded(continued.get("final_replay_val_loss")),
            "replay_val_loss_scratch_model": _rounded(scratch.get("final_replay_val_loss")),
            **on_new_files,
        },
        args.out,
    )


def _kept_model(profile: Path, to: Path) -> Path:
    """A copy of the train stage's model (the next train run replaces it)."""
    shutil.copytree(profile / "train" / "hf_model", to, dirs_exist_ok=True)
    return to


def customization(trained: dict, models: dict[str, Path], cfg) -> dict[str, float | int]:
    """Bits per byte and line completion of each model on day 2's new files (the new stream's held-out
    documents), with gzip's and the previous-line floor's on the same bytes and cuts."""
    documents, why = held_out_documents(trained, next(iter(models.values())), cfg.eval.bits_per_byte)
    if not documents:
        raise SystemExit(f"no held-out documents of day 2's files: {why}")
    out: dict[str, float | int] = {"new_files_documents": len(documents)}
    for name, model_dir in models.items():
        quality = measure_quality(model_dir, [], documents, cfg.eval)
        out[f"new_files_bits_per_byte_{name}"] = round(quality["bits_per_byte"]["model"], 4)
        out[f"new_files_line_exact_match_{name}"] = round(quality["line_completion"]["exact_match"], 4)
        out[f"new_files_line_edit_similarity_{name}"] = round(quality["line_completion"]["edit_similarity"], 2)
        out["new_files_gzip_bits_per_byte"] = round(quality["bits_per_byte"]["gzip-9"], 4)
    out["new_files_line_tasks"] = len(line_subset(documents, cfg.eval))
    out["new_files_line_edit_similarity_floor"] = round(line_floor(line_subset(documents, cfg.eval))["edit_similarity"], 2)
    return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _summary(profile: Path) -> dict:
    import json

    return json.loads((profile / "train" / "train_summary.json").read_text())


if __name__ == "__main__":
    main()
