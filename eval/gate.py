"""The promotion gate over the MLflow Model Registry's aliases.

A candidate that beats the `production` version (pass@1, and validation loss for models
too small to solve HumanEval) gets the `staff` alias: the internal rollout. `lathe promote`
moves `production` to the version staff has tried. A failing candidate is tagged with the
reason and no alias moves.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from eval.config import GateConfig
from pipelines.errors import LatheError

STAFF, PRODUCTION = "staff", "production"


@dataclass
class Decision:
    """The gate's verdict and the figures behind it."""

    passed: bool
    reason: str
    candidate: dict[str, float]
    production: dict[str, float] | None
    production_version: str | None


def _tag(key: str) -> str:
    return "eval." + key.replace("@", "_at_")  # MLflow keys allow no '@'


def _figures(client: MlflowClient, name: str, version: str) -> dict[str, float]:
    tags = client.get_model_version(name, version).tags
    return {k.removeprefix("eval.").replace("_at_", "@"): float(v) for k, v in tags.items() if k.startswith("eval.")}


def decide(client: MlflowClient, name: str, version: str, figures: dict[str, float], cfg: GateConfig) -> Decision:
    """Record the candidate's figures on its version, compare with production, move `staff` if it passes."""
    for key, value in figures.items():
        client.set_model_version_tag(name, version, _tag(key), str(value))
    try:
        prod = client.get_model_version_by_alias(name, PRODUCTION)
    except MlflowException:
        prod = None
    if prod is None:
        decision = Decision(True, "no production version yet", figures, None, None)
    else:
        theirs = _figures(client, name, prod.version)
        reasons = []
        if "pass@1" in theirs and figures["pass@1"] < theirs["pass@1"] + cfg.min_pass_at_1_gain:
            reasons.append(f"pass@1 {figures['pass@1']:.4f} < production {theirs['pass@1']:.4f} + {cfg.min_pass_at_1_gain}")
        if "val_loss" in theirs and figures.get("val_loss", float("inf")) > theirs["val_loss"] + cfg.max_val_loss_increase:
            reasons.append(f"val_loss {figures.get('val_loss'):.4f} > production {theirs['val_loss']:.4f} + {cfg.max_val_loss_increase}")
        decision = Decision(not reasons, "; ".join(reasons) or "matches or beats production", figures, theirs, str(prod.version))
    client.set_model_version_tag(name, version, "gate", "passed" if decision.passed else f"failed: {decision.reason}")
    if decision.passed:
        client.set_registered_model_alias(name, STAFF, version)
    return decision


def registered_version(client: MlflowClient, name: str, alias: str) -> str:
    """The version of ``name`` that holds ``alias``; one clear line when none does."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:  # a missing alias or model
        raise LatheError(f"no version of {name} holds the `{alias}` alias; the gate sets `staff` (`lathe run eval`), "
                         "`lathe promote` sets `production`") from None


def promote(client: MlflowClient, name: str) -> str:
    """Move `production` to the version holding `staff`; return that version."""
    version = registered_version(client, name, STAFF)
    client.set_registered_model_alias(name, PRODUCTION, version)
    return version
