"""The runner: fingerprints, manifests, skip-if-done, --force and MLflow runs (design.md).

A stage's fingerprint hashes its name, version, config section, what it observes outside
its inputs (``Stage.observe``: a registry alias, a source's state) and its inputs'
fingerprints. Its output directory gets ``manifest.json`` written last (atomically), with
where each declared output landed, so a stage that failed leaves no manifest and the next
run resumes there; downstream stages read their inputs' outputs from those manifests.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from rich.console import Console

from lathe.core.errors import InputError, LatheError
from lathe.core.registry import Registry
from lathe.core.stage import MANIFEST, Stage, StageContext, Upstream, read_manifest
from lathe.core.tracking import flatten, setup_tracking
from lathe.pipelines.config import LatheConfig
from lathe.pipelines.stages import pipeline_stages

_VERSIONED_PACKAGES = ["lathe", "pyspark", "mlflow", "torch", "tokenizers", "mosaicml", "mosaicml-streaming"]


def fingerprint(
    stage: Stage[Any], cfg: LatheConfig, input_fingerprints: dict[str, str], observed: dict[str, str] | None = None
) -> str:
    """Stable hash of everything that determines a stage's output."""
    payload = {
        "stage": stage.name,
        "version": stage.version,
        "config": stage.section(cfg).model_dump(mode="json"),
        "inputs": dict(sorted(input_fingerprints.items())),
    }
    if observed:  # only stages that observe something: other fingerprints stay as they were
        payload["observed"] = dict(sorted(observed.items()))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


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


def select_stages(requested: list[str] | None, registry: Registry[Stage[Any]] | None = None) -> list[Stage[Any]]:
    """The requested stages plus everything upstream of them, inputs before the stages using them.

    Nothing requested: every stage that is not optional."""
    registry = registry or pipeline_stages()
    ordered: list[Stage[Any]] = []
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

    for name in requested or [n for n in registry.names() if not registry.get(n).optional]:
        visit(name)
    return ordered


def finished(name: str, out_dir: Path, registry: Registry[Stage[Any]] | None = None) -> Upstream:
    """A finished stage's outputs as a downstream reader sees them; one clear line when it has not finished."""
    stage = (registry or pipeline_stages()).get(name)
    manifest = read_manifest(out_dir)
    if manifest is None or manifest.get("stage") != name:
        raise InputError(f"no finished {name} stage in {out_dir}; run `lathe run {name}` first")
    return stage.upstream(out_dir, manifest)


def planned(cfg: LatheConfig, target: str) -> tuple[dict[str, Upstream], str]:
    """``target``'s finished inputs and the fingerprint it runs under, without running, locking or
    tracking anything: for a process that joins a stage another one runs (node k > 0 of a
    multi-node training job). Every upstream stage must be finished under this config."""
    *before, stage = select_stages([target])  # the target comes last, after its upstream
    setup_tracking(Path(cfg.run.runs_dir), cfg.run.mlflow_tracking_uri, cfg.run.experiment)  # observe() may ask the registry
    profile_dir = Path(cfg.run.runs_dir) / cfg.profile
    fingerprints: dict[str, str] = {}
    upstream: dict[str, Upstream] = {}

    def fingerprint_of(s: Stage[Any]) -> str:
        fingerprints[s.name] = fingerprint(s, cfg, {d: fingerprints[d] for d in s.inputs}, s.observe(cfg) if s.observe else {})
        return fingerprints[s.name]

    for s in before:
        fp, done = fingerprint_of(s), read_manifest(profile_dir / s.name)
        if done is None or done.get("fingerprint") != fp:
            raise InputError(
                f"stage {s.name} is not finished under this config in {profile_dir / s.name}; "
                f"node 0 runs it first (or run `lathe run {s.name}`)"
            )
        upstream[s.name] = s.upstream(profile_dir / s.name, done)
    return {d: upstream[d] for d in stage.inputs}, fingerprint_of(stage)


@dataclass
class StageOutcome:
    """How one stage of a pipeline run ended."""

    name: str
    status: str  # "ran" | "skipped"
    fingerprint: str
    out_dir: Path
    duration_s: float
    manifest: dict[str, Any]  # what the stage wrote (or had written, when skipped)


@contextmanager
def profile_lock(profile_dir: Path) -> Iterator[None]:
    """One run per profile: an exclusive lock on ``<profile>/.lock`` for the whole run.

    The kernel releases a flock when its holder dies, so a killed run never leaves a stale
    lock; the file names the holder (pid, host, start) for the second run's one-line error.
    """
    profile_dir.mkdir(parents=True, exist_ok=True)
    path = profile_dir / ".lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise LatheError(
                f"profile {profile_dir.name} is being run by {holder}; wait for it to finish or stop it "
                f"(one run per profile: {path})"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _close_abandoned_runs(profile: str, experiment_name: str, console: Console) -> None:
    """Mark the MLflow runs of this profile still RUNNING as KILLED: with the profile lock held,
    no live process owns them (a run killed mid-stage never got to end its runs)."""
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(experiment_name)
    assert experiment is not None  # setup_tracking, just before, made it
    abandoned = client.search_runs(
        [experiment.experiment_id], f"tags.`lathe.profile` = '{profile}' and attributes.status = 'RUNNING'"
    )
    for run in abandoned:
        client.set_terminated(run.info.run_id, status="KILLED")
    if abandoned:
        console.print(f"marked {len(abandoned)} MLflow run(s) of an interrupted run as KILLED")


def run_pipeline(
    cfg: LatheConfig,
    requested: list[str] | None = None,
    force: bool = False,
    console: Console | None = None,
    registry: Registry[Stage[Any]] | None = None,
) -> list[StageOutcome]:
    """Run the requested stages (and their upstream ones), skipping those already done.

    ``force`` reruns the requested stages (all, if none were named) even when done.
    ``registry`` defaults to lathe's stages; tests pass their own.
    """
    console = console or Console()
    stages = select_stages(requested, registry)
    profile_dir = Path(cfg.run.runs_dir) / cfg.profile
    with profile_lock(profile_dir):
        return _run_locked(cfg, stages, requested, force, console)


def _run_locked(
    cfg: LatheConfig, stages: list[Stage[Any]], requested: list[str] | None, force: bool, console: Console
) -> list[StageOutcome]:
    forced = {s.name for s in stages} if force and not requested else set(requested or []) if force else set()
    runs_dir = Path(cfg.run.runs_dir)
    profile_dir = runs_dir / cfg.profile
    uri = setup_tracking(runs_dir, cfg.run.mlflow_tracking_uri, cfg.run.experiment)
    console.print(f"[bold]lathe[/] profile [cyan]{cfg.profile}[/] -> {profile_dir}  (MLflow: {uri})")
    _close_abandoned_runs(cfg.profile, cfg.run.experiment, console)

    outcomes: list[StageOutcome] = []
    fingerprints: dict[str, str] = {}
    upstream: dict[str, Upstream] = {}
    run_name = f"{cfg.profile}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    with mlflow.start_run(run_name=run_name) as parent:
        mlflow.set_tags({"lathe.profile": cfg.profile, "lathe.stages": ",".join(s.name for s in stages)})
        for i, stage in enumerate(stages, 1):
            out_dir = profile_dir / stage.name
            observed = stage.observe(cfg) if stage.observe else {}
            fp = fingerprint(stage, cfg, {d: fingerprints[d] for d in stage.inputs}, observed)
            fingerprints[stage.name] = fp
            console.rule(f"[bold]{i}/{len(stages)} {stage.name}[/]  fingerprint {fp}")
            if observed:
                console.print("observed: " + ", ".join(f"{k}={v or '(none)'}" for k, v in observed.items()), highlight=False)
            done = read_manifest(out_dir)
            inputs = {d: upstream[d] for d in stage.inputs}
            problem = stage.verify(done, inputs) if done and stage.verify else None
            if problem:
                console.print(f"[yellow]rerunning[/] {stage.name}: {problem}")
            if done and done.get("fingerprint") == fp and stage.name not in forced and not problem:
                console.print(f"[green]skipped[/]: {stage.name} is done ({out_dir / MANIFEST})")
                if stage.summarize:
                    stage.summarize(out_dir, console)
                upstream[stage.name] = stage.upstream(out_dir, done)
                outcomes.append(StageOutcome(stage.name, "skipped", fp, out_dir, 0.0, done))
                continue
            run = _StageRun(stage, fp, observed, out_dir, inputs, stage.name in forced or bool(problem))
            outcome = _run_stage(run, cfg, fingerprints, parent.info.run_id, console)
            upstream[stage.name] = stage.upstream(out_dir, outcome.manifest)
            outcomes.append(outcome)
    return outcomes


@dataclass
class _StageRun:
    """One stage about to run: what it was fingerprinted with and what it reads."""

    stage: Stage[Any]
    fingerprint: str
    observed: dict[str, str]
    out_dir: Path
    inputs: dict[str, Upstream]
    forced: bool


def _set_aside_previous(stage: Stage[Any], out_dir: Path, forced: bool, console: Console) -> Upstream | None:
    """For an incremental stage, move its last finished run to ``<out_dir>.previous`` and return it.

    A run that failed after the move left no manifest in ``out_dir``; the set-aside run is
    still there and is used again. ``--force`` discards it: a full rebuild.
    """
    aside = out_dir.with_name(out_dir.name + ".previous")
    if not stage.incremental or forced:
        shutil.rmtree(aside, ignore_errors=True)
        return None
    if read_manifest(out_dir) is not None:
        shutil.rmtree(aside, ignore_errors=True)
        out_dir.rename(aside)
    manifest = read_manifest(aside)
    if manifest is None:
        return None
    console.print(f"continuing from the previous {stage.name} run ({manifest.get('fingerprint')})")
    # its outputs were recorded under out_dir; they now live under the set-aside folder
    return Upstream(stage.name, aside, stage.default_outputs(aside), manifest)


def _run_stage(
    run: _StageRun, cfg: LatheConfig, fingerprints: dict[str, str], parent_run_id: str, console: Console
) -> StageOutcome:
    stage, fp, out_dir, forced = run.stage, run.fingerprint, run.out_dir, run.forced
    marker = out_dir / ".fingerprint"
    keep = stage.resumable and not forced and marker.is_file() and marker.read_text() == fp
    previous = _set_aside_previous(stage, out_dir, forced, console) if not keep else None
    if keep:
        console.print(f"resuming unfinished {stage.name} in {out_dir}")
    else:
        shutil.rmtree(out_dir, ignore_errors=True)  # leftovers of an unfinished or stale run
        out_dir.mkdir(parents=True)
        marker.write_text(fp)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    with mlflow.start_run(run_name=stage.name, nested=True) as child:
        mlflow.set_tags(
            {
                "lathe.profile": cfg.profile,
                "lathe.stage": stage.name,
                "lathe.fingerprint": fp,
                **{f"lathe.observed.{k}": v for k, v in run.observed.items()},
            }
        )
        section = stage.section(cfg).model_dump(mode="json")
        params = flatten(section)
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per call
            mlflow.log_params(dict(list(params.items())[start : start + 100]))
        ctx = StageContext(cfg, out_dir, run.inputs, console, fp, run.observed, stage.default_outputs(out_dir), previous)
        result = stage.run(ctx)
        outputs = stage.locate_outputs(out_dir, result.outputs)
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
            "inputs": {d: {"fingerprint": fingerprints[d], "path": str(run.inputs[d].dir)} for d in stage.inputs},
            "observed": run.observed,
            "outputs": outputs,
            "config": section,
            "counts": result.counts,
            "metrics": result.metrics,
            "artifacts": [str(a.relative_to(out_dir)) if a.is_relative_to(out_dir) else str(a) for a in result.artifacts],
            "details": result.details,
            "started_at": started.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "duration_s": round(duration, 3),
            "versions": _versions(),
            "mlflow": {"run_id": child.info.run_id, "parent_run_id": parent_run_id},
        }
        mlflow.log_dict(manifest, "manifest.json")
        _write_manifest(out_dir, manifest)
    if previous is not None:
        shutil.rmtree(previous.dir, ignore_errors=True)  # carried over into the new run
    console.print(f"[green]done[/]: {stage.name} in {duration:.1f}s -> {out_dir}")
    return StageOutcome(stage.name, "ran", fp, out_dir, duration, manifest)
