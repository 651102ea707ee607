"""The promotion gate over the MLflow Model Registry's aliases.

A candidate that beats the `production` version (pass@1, and validation loss for models
too small to solve HumanEval, on the new data and on the earlier snapshots' data; optionally no
language's pass@1 falling beyond a threshold) gets the `staff` alias: the internal rollout. `lathe promote`
moves `production` to the version staff has tried. A failing candidate is tagged with the
reason and no alias moves.
"""

from __future__ import annotations

from dataclasses import dataclass

from lathe.core.models import PRODUCTION, STAFF, ModelRegistry
from lathe.eval.config import GateConfig


@dataclass
class Decision:
    """The gate's verdict and the figures behind it."""

    passed: bool
    reason: str
    candidate: dict[str, float]
    production: dict[str, float] | None
    production_version: str | None


def decide(
    registry: ModelRegistry,
    version: str,
    figures: dict[str, float],
    cfg: GateConfig,
    production_here: dict[str, float] | None = None,
    compare_loss: bool = True,
    alias: str = STAFF,
) -> Decision:
    """Record the candidate's figures on its version, compare with production, move `staff` if it passes.

    ``production_here``: production's figures measured on the candidate's own data (its
    validation loss on this run's split). They replace the figures recorded when production
    was itself a candidate, which came from older data and would not compare like with like.
    ``compare_loss=False``: no loss of production's compares with the candidate's (a tuned model's
    held-out pairs production was never measured on); pass@k decides alone.
    ``alias``: what a pass moves: `staff`, or a variant's `staff-int8` / `staff-distill` (served beside the model).
    """
    registry.record_figures(version, figures)
    prod = registry.find(PRODUCTION)
    if prod is None:
        decision = Decision(True, "no production version yet", figures, None, None)
    else:
        theirs = {**registry.figures(prod), **(production_here or {})}
        reasons = []
        if "pass@1" in theirs and figures["pass@1"] < theirs["pass@1"] + cfg.min_pass_at_1_gain:
            reasons.append(f"pass@1 {figures['pass@1']:.4f} < production {theirs['pass@1']:.4f} + {cfg.min_pass_at_1_gain}")
        if (
            compare_loss
            and "val_loss" in theirs
            and figures.get("val_loss", float("inf")) > theirs["val_loss"] + cfg.max_val_loss_increase
        ):
            reasons.append(
                f"val_loss {figures.get('val_loss', float('inf')):.4f} > production {theirs['val_loss']:.4f} + "
                f"{cfg.max_val_loss_increase}"
            )
        if cfg.max_language_regression is not None:  # every other benchmark (language) production was scored on
            for key, value in figures.items():
                if key.endswith("/pass@1") and key in theirs and value < theirs[key] - cfg.max_language_regression:
                    reasons.append(
                        f"{key} {value:.4f} < production {theirs[key]:.4f} - {cfg.max_language_regression} (a language regressed)"
                    )
        # Only a candidate that replayed earlier data has a figure on it (a model trained from scratch has none).
        replay = figures.get("replay_val_loss")
        if (
            replay is not None
            and "replay_val_loss" in theirs
            and replay > theirs["replay_val_loss"] + cfg.max_replay_val_loss_increase
        ):
            reasons.append(
                f"replay_val_loss {replay:.4f} > production {theirs['replay_val_loss']:.4f} + "
                f"{cfg.max_replay_val_loss_increase} (it forgot the earlier code)"
            )
        decision = Decision(not reasons, "; ".join(reasons) or "matches or beats production", figures, theirs, prod)
    registry.set_tags(version, {"gate": "passed" if decision.passed else f"failed: {decision.reason}"})
    if decision.passed:
        registry.set_alias(alias, version)
    return decision
