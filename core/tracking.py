"""MLflow tracking: one parent run per pipeline run, one child run per stage."""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
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


def _migrated_store() -> Path | None:
    """An empty SQLite store MLflow has created and migrated, one per MLflow version, in the user's cache
    (None where the cache is not writable: then each new store migrates itself)."""
    import mlflow

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lathe"
    template = cache / f"mlflow-{mlflow.__version__}.db"
    if template.is_file():
        return template
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            partial = Path(scratch) / "mlflow.db"
            mlflow.MlflowClient(f"sqlite:///{partial}").search_experiments()  # creates the tables, migrates them
            partial.replace(template)  # whole or not at all, whichever process gets there first
    except OSError:
        return None
    return template


def seed_store(uri: str) -> None:
    """Start a new SQLite store as a copy of an empty migrated one: MLflow's migrations take ~4 s per new
    store on 2 cores, and every profile, backfill day and test makes a store. Its Default experiment
    keeps its artifacts under the store's folder. No-op for an existing store or another backend."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists() or (template := _migrated_store()) is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        copy = Path(scratch) / path.name
        copy.write_bytes(template.read_bytes())
        now = int(time.time() * 1000)
        with sqlite3.connect(copy) as db:
            db.execute(
                "UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? WHERE experiment_id = 0",
                (str(path.parent.resolve() / "mlartifacts" / "0"), now, now),
            )
        db.close()
        try:
            os.link(copy, path)  # never replaces a store another process created meanwhile
        except FileExistsError:
            pass


def setup_tracking(runs_dir: Path, configured_uri: str | None, experiment: str) -> str:
    """Point MLflow at the store and experiment (artifacts beside the store); return the URI."""
    import mlflow

    global _last_set
    uri = tracking_uri(runs_dir, configured_uri)
    runs_dir.mkdir(parents=True, exist_ok=True)
    seed_store(uri)
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
