"""The one typed configuration tree of lathe, read from YAML and `--set` overrides.

Each component's config model lives next to the code it configures (``lathe.data.config``);
this module assembles the tree, loads profiles and turns validation failures into one
line that names the offending key path.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from lathe.core.config import Strict, set_key_path
from lathe.core.errors import ConfigError
from lathe.core.spark import SparkConfig
from lathe.data.config import DataConfig, PairsConfig
from lathe.deploy.config import DeployConfig
from lathe.eval.config import EvalConfig, PreferencesConfig
from lathe.serving.config import ServeConfig
from lathe.tokenizer.config import ShardsConfig, TokenizerConfig
from lathe.training.config import DistillConfig, DPOConfig, SFTConfig, TrainConfig
from lathe.training.sweep.config import SweepConfig, sweep_candidates


class RunConfig(Strict):
    """Where artifacts and tracking go."""

    runs_dir: str = Field("runs", description="Root of run artifacts: <runs_dir>/<profile>/<stage>/.")
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow store; default sqlite:///<runs_dir>/mlflow.db. MLFLOW_TRACKING_URI overrides both.",
    )
    experiment: str = Field("lathe", description="MLflow experiment name.")
    as_of: datetime | None = Field(
        None,
        description="Read the sources as they were at this time (ISO 8601; naive = UTC): a git tree at its last commit "
        "by then, files modified by then. The DAG passes its data interval's end, so each scheduled run (and each "
        "backfilled interval) is one snapshot. Unset: as they are now.",
    )

    @field_validator("as_of")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return v.replace(tzinfo=UTC) if v is not None and v.tzinfo is None else v


class LatheConfig(Strict):
    """The whole configuration of a lathe run."""

    profile: str = Field(description="Profile name; artifacts go to <runs_dir>/<profile>/.")
    run: RunConfig = Field(default_factory=RunConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    # Post-training (optional stages: they run only when named, e.g. `lathe run sft_eval`).
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    preferences: PreferencesConfig = Field(default_factory=PreferencesConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    # Smaller served variants (optional: `lathe run distill_eval`; `lathe run quantize_eval` with serve.quantization=int8).
    distill: DistillConfig = Field(default_factory=DistillConfig)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key.path=value; e.g. --set data.dedup.threshold=0.8")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {item!r} has an empty key path")
    # Values are YAML scalars so that numbers, booleans, null and [lists] mean what they look like.
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc.problem})") from None
    return parts, value


def apply_override(tree: dict[str, Any], item: str) -> None:
    """Set ``key.path=value`` in a raw config dict; list items are addressed by index."""
    parts, value = _parse_override(item)
    set_key_path(tree, parts, value, f"override {item!r}")


def _format_validation(exc: ValidationError, origin: str) -> str:
    problems = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key {path}")
        else:
            problems.append(f"{path}: {err['msg']}")
    return f"invalid config {origin}: " + "; ".join(problems)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> LatheConfig:
    """Load a YAML profile (None: all defaults, profile ``adhoc``), apply ``--set`` overrides, validate."""
    if path is None:
        return _validate({"profile": "adhoc"}, overrides, "(defaults)")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass --config configs/tiny.yaml or another profile")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    tree.pop("variables", None)  # llm-foundry style anchors block; only for YAML reuse
    return _validate(tree, overrides, str(path))


def _validate(tree: dict[str, Any], overrides: list[str] | None, origin: str) -> LatheConfig:
    for item in overrides or []:
        apply_override(tree, item)
    try:
        cfg = LatheConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, origin)) from None
    check_across_sections(cfg, origin)
    return cfg


def check_across_sections(cfg: LatheConfig, origin: str) -> None:
    """Checks that span sections, run when the config loads: before any stage replaces good outputs."""
    model = cfg.train.model
    problems = []
    if cfg.shards.seq_len > model.max_seq_len:
        problems.append(
            f"shards.seq_len={cfg.shards.seq_len} exceeds train.model.max_seq_len={model.max_seq_len}: "
            "the model could not read its samples; lower one or raise the other"
        )
    if problems:
        raise ConfigError(f"invalid config {origin}: " + "; ".join(problems))
    try:
        for _, train in sweep_candidates(cfg.train, cfg.sweep):  # each candidate is a whole train section
            if cfg.shards.seq_len > train.model.max_seq_len:
                raise ConfigError(
                    f"sets train.model.max_seq_len={train.model.max_seq_len} below shards.seq_len={cfg.shards.seq_len}"
                )
    except ConfigError as exc:
        raise ConfigError(f"invalid config {origin}: {exc}") from None
