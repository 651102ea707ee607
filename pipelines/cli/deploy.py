"""Rollout commands: apply an overlay for the version a track holds, validate the manifests."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from lathe.core.errors import LatheError
from lathe.pipelines.cli.app import ConfigOpt, SetOpt, app, console, k8s_app, tracked_config


@app.command()
def deploy(
    track: str = typer.Option(..., "--track", help="staff or production: deploys the version holding that MLflow alias."),
    config: Path = ConfigOpt,
    set_: list[str] | None = SetOpt,
    overlay: str | None = typer.Option(None, "--overlay", help="kustomize overlay (default: the track's; gpu, keda)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print (or --output) the manifests; apply nothing."),
    output: Path | None = typer.Option(None, "--output", help="With --dry-run: write the manifests here."),
    timeout: float | None = typer.Option(
        None, "--timeout", help="Seconds to wait for the rollout before rolling back (default deploy.rollout_timeout_s)."
    ),
) -> None:
    """Render the overlay for the version holding the alias and apply it (server-side), waiting for the rollout."""
    import yaml

    from lathe.core.models import PRODUCTION, STAFF, ModelRegistry
    from lathe.deploy.kube import KubeCluster, render, with_model_version
    from lathe.deploy.kube import deploy as apply_rollout

    if track not in (STAFF, PRODUCTION):
        raise LatheError(f"--track {track!r}: use {STAFF} or {PRODUCTION}")
    cfg = tracked_config(config, set_)
    name = cfg.train.registered_model
    version = ModelRegistry(name).version_of(track)
    docs = with_model_version(render(overlay or track, cfg.deploy.manifests), version)
    if dry_run:
        text = yaml.safe_dump_all(docs, sort_keys=False)
        if output:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text)
            console.print(f"{name} v{version} (@{track}): {len(docs)} manifests -> {output} (dry run)")
        else:
            sys.stdout.write(text)
        return
    result = apply_rollout(docs, KubeCluster(), timeout_s=timeout or cfg.deploy.rollout_timeout_s)
    console.print(f"{name} v{version} (@{track}) {result} with overlay {overlay or track}")


@k8s_app.command("validate")
def k8s_validate(
    overlay: list[str] | None = typer.Argument(None, help="Overlays to check (default: all)."),
    manifests: Path = typer.Option(Path("k8s"), "--manifests", help="The kustomize tree (base/, overlays/, schemas/)."),
) -> None:
    """Build every overlay with kustomize; strict schema validation and lathe's policy checks."""
    from lathe.deploy.kube import KUBERNETES_VERSION, OVERLAYS, validate_overlays

    problems = validate_overlays(overlay or OVERLAYS, manifests)
    for name, errors in problems.items():
        console.print(f"{name}: {'[green]ok[/]' if not errors else f'[red]{len(errors)} problem(s)[/]'}")
        for e in errors:
            console.print(f"  {e}", highlight=False)
    if any(problems.values()):
        raise LatheError(f"manifests failed validation against Kubernetes {KUBERNETES_VERSION} and lathe's policy (above)")
