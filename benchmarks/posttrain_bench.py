"""Post-training on the tiny profile: SFT (full and LoRA) and DPO of the production model, before and after.

Run by `make bench` after `make all` (never by tests: timings on shared 2-core machines are noisy):

    .venv/bin/python benchmarks/posttrain_bench.py [--config configs/tiny.yaml] [--base models:/lathe-code@production]
                                                    [--work runs/bench/posttrain]

The base model (``--base``, resolved in the profile's own MLflow store) is registered as the
production version of a scratch store under ``--work``, so the bench's candidates and gates
never touch the profile's registry. Then, through the runner, exactly as `make sft` / `make dpo`:

1. SFT, every weight and LoRA (``sft.lora``), on the same mined pairs and batches: held-out
   response loss before and after, trainable-parameter share, tokens/s (Composer's SpeedMonitor).
2. DPO on the preferences stage's pairs: held-out preference accuracy and reward margin before
   and after, and the chosen answers' loss (what the gate watches).
3. HumanEval pass@k (the profile's eval settings) of the base and of each tuned version; a 4M
   model scores near zero here, but the figures come from the real generate-and-sandbox path.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlflow
from rich.console import Console

from benchmarks.common import emit
from lathe.core.models import PRODUCTION, ModelRegistry, resolve_source
from lathe.core.tracking import setup_tracking
from lathe.pipelines.config import load_config
from lathe.pipelines.runner import run_pipeline

QUIET = Console(quiet=True)


def register_base(ref: str, profile_runs: Path, work: Path) -> Path:
    """Fetch ``ref`` from the profile's store and make it version 1 (production) of the scratch store; its folder."""
    setup_tracking(profile_runs, None, "lathe")
    source = resolve_source(ref, work / "base", "--base")
    if source is None or source.is_checkpoint:
        raise SystemExit(f"--base {ref}: no such model in {profile_runs}; run `make all` first")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("posttrain-bench")
    registry = ModelRegistry()
    if registry.find(PRODUCTION) is None:
        with mlflow.start_run(run_name="base") as run:
            registry.set_alias(PRODUCTION, registry.register(source.path, run.info.run_id, {"lathe.method": "base"}))
    return source.path


def pass_at(results: Path) -> dict[str, float]:
    """The pass@k figures of an eval stage's results.json."""
    return {k: v for k, v in json.loads(results.read_text()).items() if k.startswith("pass@")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--base", default="models:/lathe-code@production")
    parser.add_argument("--work", type=Path, default=Path("runs/bench/posttrain"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    profile = load_config(args.config)
    base = register_base(args.base, Path(profile.run.runs_dir), args.work.resolve())
    common = [f"run.runs_dir={args.work}", f"run.mlflow_tracking_uri=sqlite:///{args.work.resolve() / 'mlflow.db'}"]

    from lathe.eval.evaluate import evaluate_model

    report: dict[str, object] = {"base": args.base}
    report |= {
        f"base {k}": v
        for k, v in evaluate_model(str(base), profile.eval, args.work / "base-eval").items()
        if k.startswith("pass@")
    }
    tuned: dict[str, dict] = {}
    for name, stage, sets in [("sft full", "sft", ["sft.lora=null"]), ("sft lora", "sft", ["sft.lora={}"]), ("dpo", "dpo", [])]:
        cfg = load_config(args.config, [*common, *sets])
        # the tuning and its gate run every time (timings); data, pairs and preferences are reused when done
        outcomes = {o.name: o for o in run_pipeline(cfg, [stage, f"{stage}_eval"], force=True, console=QUIET)}
        summary = outcomes[stage].manifest["details"]
        tuned[name] = summary
        report[f"{name}: held-out loss before -> after"] = f"{summary['initial_val_loss']:.4f} -> {summary['final_val_loss']:.4f}"
        if stage == "dpo":
            report["dpo: preference accuracy before -> after"] = (
                f"{summary['initial_preference_accuracy']:.3f} -> {summary['final_preference_accuracy']:.3f}"
            )
            report["dpo: reward margin before -> after"] = (
                f"{summary['initial_reward_margin']:.3f} -> {summary['final_reward_margin']:.3f}"
            )
        report[f"{name}: trainable share"] = f"{summary['trainable_share']:.4f}"
        report[f"{name}: tokens/s"] = round(summary["tokens_per_s"] or 0.0)
        report |= {f"{name} {k}": v for k, v in pass_at(Path(outcomes[f"{stage}_eval"].manifest["outputs"]["results"])).items()}
        gate = json.loads(Path(outcomes[f"{stage}_eval"].manifest["outputs"]["results"]).read_text())["gate"]
        report[f"{name}: gate"] = "passed" if gate["passed"] else f"failed ({gate['reason']})"
    full, lora = tuned["sft full"], tuned["sft lora"]
    report["lora / full: trainable share"] = f"{lora['trainable_share'] / full['trainable_share']:.4f}"
    if full.get("tokens_per_s") and lora.get("tokens_per_s"):
        report["lora / full: tokens/s"] = f"{lora['tokens_per_s'] / full['tokens_per_s']:.2f}"
    emit(report, args.work / "posttrain_bench.json")


if __name__ == "__main__":
    main()
