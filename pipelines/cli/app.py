"""The `lathe` Typer app, its command groups and the options every command shares."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from lathe.pipelines.config import LatheConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help="lathe: raw code to a served completion model.")
data_app = typer.Typer(no_args_is_help=True, help="Data-stage tools for operators.")
app.add_typer(data_app, name="data")
k8s_app = typer.Typer(no_args_is_help=True, help="Kubernetes manifests: render and validate offline.")
app.add_typer(k8s_app, name="k8s")
eval_app = typer.Typer(no_args_is_help=True, help="HumanEval scoring in a sandbox.")
app.add_typer(eval_app, name="eval")

console = Console()
DEFAULT_CONFIG = Path("configs/tiny.yaml")
ConfigOpt = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="YAML profile.")
OptionalConfigOpt = typer.Option(None, "--config", "-c", help="YAML profile (default: built-in defaults).")
SetOpt = typer.Option(None, "--set", help="Override a config value: key.path=value (repeatable).")


def load(config: Path | None, overrides: list[str] | None) -> LatheConfig:
    """The config from a profile and ``--set`` overrides."""
    from lathe.pipelines.config import load_config

    return load_config(config, overrides)


def tracked_config(config: Path | None, overrides: list[str] | None) -> LatheConfig:
    """Load the config and point MLflow at its store (for commands that read the Model Registry)."""
    from lathe.core.tracking import setup_tracking

    cfg = load(config, overrides)
    setup_tracking(Path(cfg.run.runs_dir), cfg.run.mlflow_tracking_uri, cfg.run.experiment)
    return cfg
