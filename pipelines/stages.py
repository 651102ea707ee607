"""The pipeline: which stages make up a lathe run (the roof decides; components only define stages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lathe.core.registry import Registry
from lathe.core.stage import Stage
from lathe.data.pairs import PAIRS
from lathe.data.stage import DATA
from lathe.eval.preference_stage import PREFERENCES
from lathe.eval.stage import DISTILL_EVAL, DPO_EVAL, EVAL, QUANTIZE_EVAL, SFT_EVAL
from lathe.serving.quantize import quantize_stage
from lathe.serving.stage import CANARY, PACKAGE
from lathe.tokenizer.stage import SHARDS, TOKENIZER
from lathe.training.distill.stage import DISTILL
from lathe.training.posttrain.stage import DPO, SFT
from lathe.training.stage import train_stage


def score_candidate(model_dir: Path, out_dir: Path, cfg: Any) -> dict[str, float]:
    """A sweep candidate's pass@k on every benchmark of ``eval.benchmarks``, as the eval stage measures it."""
    from lathe.eval.evaluate import evaluate_model, report_figures

    return report_figures(evaluate_model(str(model_dir), cfg.eval, out_dir))


def eval_prompts(cfg: Any) -> list[str]:
    """The prompts of the first benchmark of ``eval.benchmarks``, in order: what the int8 variant's greedy
    completions are compared with the fp32 model's on."""
    from lathe.eval.benchmarks import BENCHMARKS

    return [p["prompt"] for p in BENCHMARKS.get(cfg.eval.benchmarks[0]).problems().values()]


TRAIN = train_stage(score_candidate)
QUANTIZE = quantize_stage(eval_prompts)


def pipeline_stages() -> Registry[Stage[Any]]:
    """raw -> data -> tokenizer -> shards -> train -> eval (+ gate) -> package -> canary, by name; then the
    optional post-training stages: data -> pairs -> sft -> sft_eval, and pairs -> preferences -> dpo -> dpo_eval;
    and the optional smaller variants: train -> quantize -> quantize_eval, shards -> distill -> distill_eval."""
    stages: Registry[Stage[Any]] = Registry("stage")
    for stage in (
        DATA,
        TOKENIZER,
        SHARDS,
        TRAIN,
        EVAL,
        PACKAGE,
        CANARY,
        PAIRS,
        SFT,
        SFT_EVAL,
        PREFERENCES,
        DPO,
        DPO_EVAL,
        QUANTIZE,
        QUANTIZE_EVAL,
        DISTILL,
        DISTILL_EVAL,
    ):
        stages.register(stage.name)(stage)
    return stages
