"""The runner: fingerprints, manifests, skip-if-done, --force and MLflow runs (design.md).

A stage's fingerprint hashes its name, version, config section and its inputs'
fingerprints. Its output directory gets ``manifest.json`` written last (atomically), so a
stage that failed leaves no manifest and the next run resumes there.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from rich.console import Console

from pipelines.config import LatheConfig
from pipelines.registry import Registry
from pipelines.stages import Stage, StageContext, load_stages
from pipelines.tracking import flatten, setup_tracking

MANIFEST = "manifest.json"
_VERSIONED_PACKAGES = ["lathe", "pyspark", "mlflow", "torch", "tokenizers", "mosaicml", "mosaicml-streaming"]


def fingerprint(stage: Stage, cfg: LatheConfig, input_fingerprints: dict[str, str]) -> str:
    """Stable hash of everything that determines a stage's output."""
    payload = {
        "stage": stage.name,
        "version": stage.version,
        "config": stage.section(cfg).model_dump(mode="json"),
        "inputs": dict(sorted(input_fingerprints.items())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The finished stage's manifest, or None if the stage never finished there."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a torn manifest means an unfinished stage


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for pkg in _VERSIONED_PACKAGES:
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return found


def _write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    os.replace(tmp, out_dir / MANIFEST)


def select_stages(requested: list[str] | None, registry: Registry[Stage] | None = None) -> list[Stage]:
    """The requested stages plus everything upstream of them, inputs before the stages using them."""
    registry = registry or load_stages()
    ordered: list[Stage] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        stage = registry.get(name)
        if stage in ordered:
            return
        if name in visiting:
            raise ValueError(f"stage {name!r} depends on itself")
        visiting.add(name)
        for dep in stage.inputs:
            visit(dep)
        ordered.append(stage)

    for name in requested or registry.names():
        visit(name)
    return ordered


@dataclass
class StageOutcome:
    """How one stage of a pipeline run ended."""

    name: str
    status: str  # "ran" | "skipped"
    fingerprint: str
    out_dir: Path
    duration_s: float


def run_pipeline(
    cfg: LatheConfig,
    requested: list[str] | None = None,
    force: bool = False,
    console: Console | None = None,
    registry: Registry[Stage] | None = None,
) -> list[StageOutcome]:
    """Run the requested stages (and their upstream ones), skipping those already done.

    ``force`` reruns the requested stages (all, if none were named) even when done.
    ``registry`` defaults to lathe's stages; tests pass their own.
    """
    console = console or Console()
    stages = select_stages(requested, registry)
    forced = {s.name for s in stages} if force and not requested else set(requested or []) if force else set()
    runs_dir = Path(cfg.run.runs_dir)
    profile_dir = runs_dir / cfg.profile
    uri = setup_tracking(runs_dir, cfg.run.mlflow_tracking_uri, cfg.run.experiment)
    console.print(f"[bold]lathe[/] profile [cyan]{cfg.profile}[/] -> {profile_dir}  (MLflow: {uri})")

    outcomes: list[StageOutcome] = []
    fingerprints: dict[str, str] = {}
    run_name = f"{cfg.profile}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    with mlflow.start_run(run_name=run_name) as parent:
        mlflow.set_tags({"lathe.profile": cfg.profile, "lathe.stages": ",".join(s.name for s in stages)})
        for i, stage in enumerate(stages, 1):
            out_dir = profile_dir / stage.name
            fp = fingerprint(stage, cfg, {d: fingerprints[d] for d in stage.inputs})
            fingerprints[stage.name] = fp
            console.rule(f"[bold]{i}/{len(stages)} {stage.name}[/]  fingerprint {fp}")
            done = read_manifest(out_dir)
            if done and done.get("fingerprint") == fp and stage.name not in forced:
                console.print(f"[green]skipped[/]: {stage.name} is done ({out_dir / MANIFEST})")
                if stage.summarize:
                    stage.summarize(out_dir, console)
                outcomes.append(StageOutcome(stage.name, "skipped", fp, out_dir, 0.0))
                continue
            outcomes.append(
                _run_stage(stage, cfg, fp, fingerprints, out_dir, profile_dir, parent.info.run_id, console, stage.name in forced)
            )
    return outcomes


def _run_stage(
    stage: Stage,
    cfg: LatheConfig,
    fp: str,
    fingerprints: dict[str, str],
    out_dir: Path,
    profile_dir: Path,
    parent_run_id: str,
    console: Console,
    forced: bool,
) -> StageOutcome:
    marker = out_dir / ".fingerprint"
    keep = stage.resumable and not forced and marker.is_file() and marker.read_text() == fp
    if keep:
        console.print(f"resuming unfinished {stage.name} in {out_dir}")
    else:
        shutil.rmtree(out_dir, ignore_errors=True)  # leftovers of an unfinished or stale run
        out_dir.mkdir(parents=True)
        marker.write_text(fp)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    with mlflow.start_run(run_name=stage.name, nested=True) as child:
        mlflow.set_tags({"lathe.stage": stage.name, "lathe.fingerprint": fp})
        section = stage.section(cfg).model_dump(mode="json")
        params = flatten(section)
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per call
            mlflow.log_params(dict(list(params.items())[start : start + 100]))
        ctx = StageContext(cfg, out_dir, {d: profile_dir / d for d in stage.inputs}, console, fp)
        result = stage.run(ctx)
        duration = time.perf_counter() - t0
        mlflow.log_metrics({**{f"count.{k}": float(v) for k, v in result.counts.items()}, **result.metrics})
        mlflow.log_metric("duration_s", duration)
        for artifact in result.artifacts:
            mlflow.log_artifact(str(artifact))
        manifest = {
            "stage": stage.name,
            "version": stage.version,
            "fingerprint": fp,
            "profile": cfg.profile,
            "inputs": {d: {"fingerprint": fingerprints[d], "path": str(profile_dir / d)} for d in stage.inputs},
            "config": section,
            "counts": result.counts,
            "metrics": result.metrics,
            "artifacts": [str(a.relative_to(out_dir)) if a.is_relative_to(out_dir) else str(a) for a in result.artifacts],
            "details": result.details,
            "started_at": started.isoformat(),
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "duration_s": round(duration, 3),
            "versions": _versions(),
            "mlflow": {"run_id": child.info.run_id, "parent_run_id": parent_run_id},
        }
        mlflow.log_dict(manifest, "manifest.json")
        _write_manifest(out_dir, manifest)
    console.print(f"[green]done[/]: {stage.name} in {duration:.1f}s -> {out_dir}")
    return StageOutcome(stage.name, "ran", fp, out_dir, duration)
