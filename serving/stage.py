"""Stages `package` (registered model version -> Triton model repositories) and `canary`
(the package served by a real tritonserver answers a completion that matches local
generation, then holds a short load with zero failures)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from lathe.core.models import ModelRegistry, resolve_model, variant_alias
from lathe.core.quant import bytes_on_disk
from lathe.core.stage import Stage, StageContext, StageResult, json_summary
from lathe.serving.canary import canary, print_canary
from lathe.serving.config import ServeConfig
from lathe.serving.package import build_repositories, checkpoint_dir, model_code_digest, publish, variant_name
from lathe.training.config import TrainConfig


class ServeSections(Protocol):
    """The config sections the package and canary stages read."""

    serve: ServeConfig
    train: TrainConfig  # train.registered_model: the model whose version is packaged


def served_variants(cfg: ServeConfig) -> list[str]:
    """The variants ``serve`` asks to be served beside the model (``int8``, ``distill``)."""
    return [v for v, wanted in (("int8", cfg.quantization == "int8"), ("distill", cfg.student)) if wanted]


def observe_track(cfg: ServeSections) -> dict[str, str]:
    """Which registered versions hold ``serve.track`` (and the served variants' ``<track>-<variant>``) now: part of
    the package stage's fingerprint, so moving an alias repackages (and an unmoved one skips)."""
    name = cfg.train.registered_model
    registry = ModelRegistry(name)
    return {
        "model": name,
        "track": cfg.serve.track,
        "version": registry.find(cfg.serve.track) or "",
        **{f"variant.{v}": registry.find(variant_alias(cfg.serve.track, v)) or "" for v in served_variants(cfg.serve)},
    }


def variant_version(registry: ModelRegistry, track: str, variant: str, version: str, held: str) -> tuple[str | None, str]:
    """The version of ``variant`` to serve beside ``version`` (which holds ``track``): ``held``, the one its gate gave
    ``<track>-<variant>`` ("": none), where an int8 variant must be made from ``version`` itself; else None and why not."""
    alias = variant_alias(track, variant)
    stage = {"int8": "quantize_eval", "distill": "distill_eval"}[variant]
    if not held:
        return None, f"no version of {registry.name} holds `{alias}` (none passed `{stage}`)"
    parent = registry.tags(held).get("lathe.parent_version", "")
    if variant == "int8" and parent != version:
        return None, (
            f"`{alias}` holds version {held}, quantised from version {parent or '?'}, but `{track}` holds version "
            f"{version}: `lathe run {stage}` quantises it"
        )
    return held, ""


def run_package(ctx: StageContext[ServeSections]) -> StageResult:
    """Download the versions that held ``serve.track`` (and its variants' aliases) when the stage was fingerprinted
    and write both repositories."""
    cfg, name = ctx.config.serve, ctx.observed["model"]
    registry = ModelRegistry(name)
    version = ctx.observed["version"] or registry.version_of(cfg.track)  # none holds it: version_of says so in one line
    download = resolve_model(registry.uri(version), ctx.out_dir / "download" / "model")
    variants, missing = {}, {}
    for variant in served_variants(cfg):
        # a variant that failed its gate (or was made from another version) is not served; the model still is
        held, why = variant_version(registry, cfg.track, variant, version, ctx.observed[f"variant.{variant}"])
        if held is None:
            missing[variant_name(cfg.model_name, variant)] = why
            ctx.console.print(f"[yellow]package: not serving {variant_name(cfg.model_name, variant)}: {why}[/]")
            continue
        variants[variant] = (resolve_model(registry.uri(held), ctx.out_dir / "download" / variant), int(held))
    roots = build_repositories(download, int(version), ctx.out_dir, cfg, variants)
    shutil.rmtree(ctx.out_dir / "download")  # the repositories hold (hard links to) the files
    registry.set_tags(version, {"triton_repository": str(roots["python"].resolve())})
    published = publish(roots, cfg.publish_uri, cfg.model_name, int(version)) if cfg.publish_uri else {}
    if published:
        registry.set_tags(version, {"published_repository": published["python"]})
    info: dict[str, Any] = {
        "model": name,
        "version": int(version),
        "track": cfg.track,
        "triton_model": cfg.model_name,
        "variants": {
            variant_name(cfg.model_name, v): {
                "version": held,
                "bytes": bytes_on_disk(checkpoint_dir(roots["python"], variant_name(cfg.model_name, v), held)),
            }
            for v, (_, held) in variants.items()
        },
        "not_served": missing,
        "fp8_model": variant_name(cfg.model_name, "fp8") if cfg.quantization == "fp8" else None,
        "repository": str(roots["python"]),
        "vllm_repository": str(roots["vllm"]),
        "published": published,
        "bytes": sum(f.stat().st_size for f in roots["python"].rglob("*") if f.is_file()),
    }
    (ctx.out_dir / "package.json").write_text(json.dumps(info, indent=2))
    print_package(info, ctx.console)
    return StageResult(
        counts={"version": int(version), "bytes": info["bytes"]},
        artifacts=[ctx.out_dir / "package.json", roots["python"] / cfg.model_name / "config.pbtxt"],
        details=info,
    )


def print_package(info: dict[str, Any], console: Console) -> None:
    """Which version went where."""
    console.print(
        f"[bold]package[/]: {info['model']} v{info['version']} (@{info['track']}) -> {info['repository']} "
        f"(python backend) and {info['vllm_repository']} (vLLM, GPU)"
    )
    for model, variant in (info.get("variants") or {}).items():
        console.print(f"  beside it: {model} (v{variant['version']}, {variant['bytes'] / 1e6:.1f} MB of weights)")
    if info.get("fp8_model"):
        console.print(f"  beside it: {info['fp8_model']} (vLLM quantises to fp8 on the GPU)")


def run_canary(ctx: StageContext[ServeSections]) -> StageResult:
    """Serve the package, compare one greedy completion with local generation, hold a short load."""
    package = ctx.inputs["package"]
    info = json.loads(package.path("info").read_text())
    variants = {name: int(v["version"]) for name, v in (info.get("variants") or {}).items()}
    report = {
        "model": info["model"],
        **canary(package.path("repository"), info["version"], ctx.config.serve, Path(ctx.outputs["server_log"]), variants),
    }
    Path(ctx.outputs["report"]).write_text(json.dumps(report, indent=2))
    print_canary(report, ctx.console)
    load = report["load"]
    return StageResult(
        counts={"requests": load["requests"], "failures": load["failures"], "tokens": load["tokens"]},
        metrics={
            "ttft_p50_s": load["ttft_p50_s"],
            "latency_p50_s": load["p50_s"],
            "latency_p95_s": load["p95_s"],
            "tokens_per_s": load["tokens_per_s"],
        },
        artifacts=[Path(ctx.outputs["report"])],
        details={"completion": report["completion"]},
    )


def package_headline(manifest: dict[str, Any]) -> str:
    """Which version of which model, from which track."""
    d = manifest["details"]
    return f"{d['model']} v{d['version']} (@{d['track']})"


def canary_headline(manifest: dict[str, Any]) -> str:
    """Served latency and failures under the canary's load."""
    m, counts = manifest["metrics"], manifest["counts"]
    return (
        f"first token p50 {m['ttft_p50_s'] * 1000:.0f} ms, latency p50 {m['latency_p50_s'] * 1000:.0f} ms / "
        f"p95 {m['latency_p95_s'] * 1000:.0f} ms, {counts['requests']} requests, {counts['failures']} failed"
    )


PACKAGE: Stage[Any] = Stage(
    name="package",
    inputs=("eval",),
    section=lambda cfg: cfg.serve,
    run=run_package,
    outputs={"repository": "triton", "vllm_repository": "triton-vllm", "info": "package.json"},
    # 2: fingerprinted by the version the track's alias holds; the served code's digest, so new model code repackages
    version=f"2-{model_code_digest()}",
    summarize=json_summary("package.json", print_package),
    headline=package_headline,
    observe=observe_track,
)
CANARY: Stage[Any] = Stage(
    name="canary",
    inputs=("package",),
    section=lambda cfg: cfg.serve,
    run=run_canary,
    outputs={"report": "canary.json", "server_log": "tritonserver.log"},
    summarize=json_summary("canary.json", print_canary),
    headline=canary_headline,
)
