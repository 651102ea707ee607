"""The promotion gate over the MLflow Model Registry's aliases.

A candidate that beats the `production` version (pass@1, and validation loss for models
too small to solve HumanEval, on the new data and on the earlier snapshots' data; optionally no
language's pass@1 falling beyond a threshold; and, measured on both models item by item, infilling
and bits per byte not worse beyond a margin and beyond noise) gets the `staff` alias: the internal rollout. `lathe promote`
moves `production` to the version staff has tried. A failing candidate is tagged with the
reason and no alias moves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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


@dataclass(frozen=True)
class Paired:
    """A figure measured item by item (infilling tasks, held-out documents) on the candidate and on production.

    The figure is ``sum(values) / sum(weights)``: with unit weights a mean over tasks (pass@1, edit
    similarity); with each document's bytes as weights and its bits as values, bits per byte.
    """

    candidate: Sequence[float]
    production: Sequence[float]
    higher_is_better: bool
    margin: float = 0.0  # how much worse the candidate may be before noise is even considered
    weights: Sequence[float] | None = None  # None: every item weighs 1

    def figures(self) -> tuple[float, float]:
        """(candidate, production): the figure over all items."""
        total = float(sum(self.weights)) if self.weights is not None else float(len(self.candidate))
        return float(sum(self.candidate)) / total, float(sum(self.production)) / total


def paired_interval(paired: Paired, confidence: float, resamples: int, seed: int = 0) -> tuple[float, float]:
    """The ``confidence`` interval of (candidate - production) by a paired bootstrap over items: each resample
    draws items with replacement and takes both models' figures on the same draw, so what the items share
    (an easy task is easy for both) cancels out. Seeded: the same figures give the same verdict."""
    a, b = np.asarray(paired.candidate, dtype=np.float64), np.asarray(paired.production, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired figures need the same items on both models, got {a.size} and {b.size}")
    w = np.ones_like(a) if paired.weights is None else np.asarray(paired.weights, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, a.size, size=(resamples, a.size))
    stats = (a - b)[draws].sum(axis=1) / w[draws].sum(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return float(low), float(high)


def noise_aware_regressions(paired: dict[str, Paired], cfg: GateConfig) -> list[str]:
    """Why the candidate is worse than production beyond each figure's margin and beyond noise (none: it is not)."""
    reasons = []
    for name, p in paired.items():
        low, high = paired_interval(p, cfg.confidence, cfg.bootstrap_resamples)
        worse = high < -p.margin if p.higher_is_better else low > p.margin
        if worse:
            ours, theirs = p.figures()
            reasons.append(
                f"{name} {ours:.4f} {'<' if p.higher_is_better else '>'} production {theirs:.4f} beyond noise "
                f"({cfg.confidence:.0%} interval of the difference {low:+.4f} .. {high:+.4f}, margin {p.margin})"
            )
    return reasons


def decide(
    registry: ModelRegistry,
    version: str,
    figures: dict[str, float],
    cfg: GateConfig,
    production_here: dict[str, float] | None = None,
    compare_loss: bool = True,
    alias: str = STAFF,
    paired: dict[str, Paired] | None = None,
) -> Decision:
    """Record the candidate's figures on its version, compare with production, move `staff` if it passes.

    ``production_here``: production's figures measured on the candidate's own data (its
    validation loss on this run's split). They replace the figures recorded when production
    was itself a candidate, which came from older data and would not compare like with like.
    ``compare_loss=False``: no loss of production's compares with the candidate's (a tuned model's
    held-out pairs production was never measured on); pass@k decides alone.
    ``alias``: what a pass moves: `staff`, or a variant's `staff-int8` / `staff-distill` (served beside the model).
    ``paired``: figures measured item by item on both models (infilling, bits per byte), compared with a
    noise-aware margin (:func:`noise_aware_regressions`).
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
                # infill/<mode>/pass@1 is not a language: it is gated item by item, with noise (paired, below)
                language = key.endswith("/pass@1") and not key.startswith("infill/")
                if language and key in theirs and value < theirs[key] - cfg.max_language_regression:
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
        reasons += noise_aware_regressions(paired or {}, cfg)
        decision = Decision(not reasons, "; ".join(reasons) or "matches or beats production", figures, theirs, prod)
    registry.set_tags(version, {"gate": "passed" if decision.passed else f"failed: {decision.reason}"})
    if decision.passed:
        registry.set_alias(alias, version)
    return decision
