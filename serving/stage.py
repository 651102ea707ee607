"""Stages `package` (registered model version -> Triton model repositories) and `canary`
(the package served by a real tritonserver answers a completion that matches local
generation, then holds a short load with zero failures)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from rich.console import Console

from eval.gate import registered_version
from eval.stage import resolve_model
from pipelines.errors import LatheError
from pipelines.stages import Stage, StageContext, StageResult, json_summary, register
from serving.config import ServeConfig
from serving.package import build_repositories, publish


def run_package(ctx: StageContext) -> StageResult:
    """Download the version holding ``serve.track`` and write both repositories."""
    cfg, name = ctx.config.serve, ctx.config.train.registered_model
    client = MlflowClient()
    version = registered_version(client, name, cfg.track)
    download = resolve_model(f"models:/{name}/{version}", ctx.out_dir / "download")
    roots = build_repositories(download, int(version), ctx.out_dir, cfg)
    shutil.rmtree(ctx.out_dir / "download")  # the repositories hold (hard links to) the files
    client.set_model_version_tag(name, version, "triton_repository", str(roots["python"].resolve()))
    published = publish(roots, cfg.publish_uri, cfg.model_name, int(version)) if cfg.publish_uri else {}
    if published:
        client.set_model_version_tag(name, version, "published_repository", published["python"])
    info = {"model": name, "version": int(version), "track": cfg.track, "triton_model": cfg.model_name,
            "repository": str(roots["python"]), "vllm_repository": str(roots["vllm"]), "published": published,
            "bytes": sum(f.stat().st_size for f in roots["python"].rglob("*") if f.is_file())}
    (ctx.out_dir / "package.json").write_text(json.dumps(info, indent=2))
    print_package(info, ctx.console)
    return StageResult(counts={"version": int(version), "bytes": info["bytes"]}, artifacts=[ctx.out_dir / "package.json",
                       roots["python"] / cfg.model_name / "config.pbtxt"], details=info)


def print_package(info: dict[str, Any], console: Console) -> None:
    """Which version went where."""
    console.print(f"[bold]package[/]: {info['model']} v{info['version']} (@{info['track']}) -> {info['repository']} "
                  f"(python backend) and {info['vllm_repository']} (vLLM, GPU)")


def run_canary(ctx: StageContext) -> StageResult:
    """Serve the package, compare one greedy completion with local generation, hold a short load."""
    from serving.client import complete
    from serving.engine import Engine
    from serving.loadtest import grpc_sender, run_load
    from serving.server import TritonServer

    cfg: ServeConfig = ctx.config.serve
    info = json.loads((ctx.inputs["package"] / "package.json").read_text())
    repository = Path(info["repository"])
    max_tokens = cfg.canary_load.max_tokens
    engine = Engine(repository / cfg.model_name / str(info["version"]) / "hf_model")
    request = engine.parse(cfg.canary_prompt, {"max_tokens": max_tokens})
    expected_ids = [t for event in engine.generate([request]) for t in event.token_ids]
    with TritonServer(repository, 0, 0, 0, log_file=ctx.out_dir / "tritonserver.log", ready_timeout_s=cfg.ready_timeout_s,
                      stop_timeout_s=cfg.stop_timeout_s) as server:
        got = complete(server.endpoints.grpc, cfg.canary_prompt, cfg.model_name, max_tokens=max_tokens)
        if got.token_ids != expected_ids:
            raise LatheError(f"served greedy completion {got.token_ids} differs from local generation {expected_ids}")
        load = run_load(grpc_sender(server.endpoints.grpc, cfg.model_name, max_tokens), cfg.canary_load.clients, cfg.canary_load.seconds)
    if load.failures:
        raise LatheError(f"{load.failures} of {load.requests + load.failures} canary requests failed: {load.errors}")
    report = {"model": info["model"], "version": info["version"], "prompt": cfg.canary_prompt, "completion": got.text,
              "first_token_s": got.first_token_s, "latency_s": got.latency_s, "load": load.as_dict()}
    (ctx.out_dir / "canary.json").write_text(json.dumps(report, indent=2))
    print_canary(report, ctx.console)
    return StageResult(
        counts={"requests": load.requests, "failures": load.failures, "tokens": load.tokens},
        metrics={"ttft_p50_s": load.ttft_p50_s, "latency_p50_s": load.p50_s, "latency_p95_s": load.p95_s,
                 "tokens_per_s": load.tokens_per_s},
        artifacts=[ctx.out_dir / "canary.json"], details={"completion": got.text},
    )


def print_canary(report: dict[str, Any], console: Console) -> None:
    """The served completion and the load figures."""
    load = report["load"]
    console.print(f"[bold]canary[/]: Triton served {report['model']} v{report['version']}: "
                  f"{report['prompt']!r} -> {report['completion']!r}")
    console.print(f"  {load['clients']} clients x {load['seconds']:.0f}s: {load['requests']} requests, {load['failures']} failed, "
                  f"p50 {load['p50_s'] * 1000:.0f} ms, p95 {load['p95_s'] * 1000:.0f} ms, "
                  f"first token p50 {load['ttft_p50_s'] * 1000:.0f} ms, {load['tokens_per_s']:.0f} tokens/s")


PACKAGE = register(Stage(name="package", inputs=("eval",), section=lambda cfg: cfg.serve, run=run_package,
                         summarize=json_summary("package.json", print_package)))
CANARY = register(Stage(name="canary", inputs=("package",), section=lambda cfg: cfg.serve, run=run_canary,
                        summarize=json_summary("canary.json", print_canary)))
