"""MLflow tracking: one parent run per pipeline run, one child run per stage."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# mlflow.set_tracking_uri() also exports MLFLOW_TRACKING_URI (for subprocesses), so the
# variable only states the user's choice when it differs from what lathe last set.
_last_set: str | None = None


def tracking_uri(runs_dir: Path, configured: str | None) -> str:
    """MLFLOW_TRACKING_URI, else the config's URI, else a SQLite store under ``runs_dir``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and env != _last_set:
        return env
    return configured or f"sqlite:///{runs_dir.resolve()}/mlflow.db"


def setup_tracking(runs_dir: Path, configured_uri: str | None, experiment: str) -> str:
    """Point MLflow at the store and experiment (artifacts beside the store); return the URI."""
    import mlflow

    global _last_set
    uri = tracking_uri(runs_dir, configured_uri)
    runs_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    _last_set = uri
    if mlflow.get_experiment_by_name(experiment) is None:
        location = (runs_dir.resolve() / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return uri


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {'a.b.c': 'value'} for MLflow params (values capped at MLflow's limit)."""
    out: dict[str, str] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
    else:
        text = tree if isinstance(tree, str) else json.dumps(tree, default=str)
        out[prefix.rstrip(".")] = text[:6000]
    return out


def mlflow_key(name: str) -> str:
    """A figure's name as an MLflow metric or tag key (MLflow keys allow no '@': pass@1 -> pass_at_1)."""
    return name.replace("@", "_at_")


def figure_name(key: str) -> str:
    """The inverse of :func:`mlflow_key`."""
    return key.replace("_at_", "@")
