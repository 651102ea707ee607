"""The canary: the packaged model served by a real tritonserver answers one greedy completion that
matches local generation token for token, the OpenAI-compatible gateway in front of it answers a
fill-in-the-middle request exactly as local generation does, then the server holds a short load
with zero failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from lathe.core.errors import LatheError
from lathe.serving.config import ServeConfig
from lathe.serving.package import checkpoint_dir


def canary(
    repository: Path, version: int, cfg: ServeConfig, log_file: Path, variants: dict[str, int] | None = None
) -> dict[str, Any]:
    """Serve ``repository``, compare one greedy completion with local generation (of the model and of each of
    ``variants``: Triton model name -> version, served beside it), hold a short load on the model; the report."""
    from lathe.serving.loadtest import grpc_sender, run_load
    from lathe.serving.server import TritonServer

    with TritonServer(
        repository, 0, 0, 0, log_file=log_file, ready_timeout_s=cfg.ready_timeout_s, stop_timeout_s=cfg.stop_timeout_s
    ) as server:
        engine, got = _served_as_local(server.endpoints.grpc, repository, cfg.model_name, version, cfg)
        served = {
            name: _served_as_local(server.endpoints.grpc, repository, name, v, cfg)[1] for name, v in (variants or {}).items()
        }
        fim = _fim_through_gateway(engine, server.endpoints.grpc, cfg, log_file.parent / "canary-telemetry.db")
        load = run_load(
            grpc_sender(server.endpoints.grpc, cfg.model_name, cfg.canary_load.max_tokens),
            cfg.canary_load.clients,
            cfg.canary_load.seconds,
        )
    if load.failures:
        raise LatheError(f"{load.failures} of {load.requests + load.failures} canary requests failed: {load.errors}")
    return {
        "version": version,
        "prompt": cfg.canary_prompt,
        "completion": got.text,
        "token_ids": got.token_ids,
        "first_token_s": got.first_token_s,
        "latency_s": got.latency_s,
        "fim": fim,
        "load": load.as_dict(),
        "variants": {
            name: {"version": (variants or {})[name], "completion": c.text, "token_ids": c.token_ids, "latency_s": c.latency_s}
            for name, c in served.items()
        },
    }


def _served_as_local(url: str, repository: Path, name: str, version: int, cfg: ServeConfig) -> tuple[Any, Any]:
    """Triton model ``name``'s greedy completion of the canary prompt, checked token for token against the same
    checkpoint generating locally; (the local engine, the served completion)."""
    from lathe.serving.client import complete
    from lathe.serving.engine import Engine

    max_tokens = cfg.canary_load.max_tokens
    engine = Engine(checkpoint_dir(repository, name, version))
    request = engine.parse(cfg.canary_prompt, {"max_tokens": max_tokens})
    expected_ids = [t for event in engine.generate([request]) for t in event.token_ids]
    got = complete(url, cfg.canary_prompt, name, max_tokens=max_tokens)
    if got.token_ids != expected_ids:
        raise LatheError(
            f"{name} v{version}: served greedy completion {got.token_ids} differs from local generation {expected_ids}"
        )
    return engine, got


def _fim_through_gateway(engine: Any, triton_url: str, cfg: ServeConfig, telemetry: Path) -> dict[str, Any]:
    """A FIM completion asked of the gateway, as an editor would, checked against local generation."""
    import httpx

    from lathe.serving.gateway import running_gateway

    max_tokens = cfg.canary_load.max_tokens
    request = engine.parse(cfg.canary_prompt, {"suffix": cfg.canary_suffix, "max_tokens": max_tokens})
    expected = "".join(event.text for event in engine.generate([request]))
    telemetry.unlink(missing_ok=True)
    with running_gateway(cfg.gateway, triton_url, cfg.model_name, f"sqlite:///{telemetry.resolve()}") as url:
        answer = httpx.post(
            f"{url}/completions",
            json={"model": cfg.model_name, "prompt": cfg.canary_prompt, "suffix": cfg.canary_suffix, "max_tokens": max_tokens},
            timeout=cfg.ready_timeout_s,
        )
    if answer.status_code != 200:
        raise LatheError(f"the gateway refused the canary's FIM request ({answer.status_code}): {answer.text[:300]}")
    body = answer.json()
    text = body["choices"][0]["text"]
    if text != expected or body["usage"]["prompt_tokens"] != len(request.prompt_ids):
        raise LatheError(
            f"the gateway's FIM completion {text!r} ({body['usage']['prompt_tokens']} prompt tokens) differs from "
            f"local generation {expected!r} ({len(request.prompt_ids)})"
        )
    return {"suffix": cfg.canary_suffix, "completion": text, "prompt_tokens": body["usage"]["prompt_tokens"]}


def print_canary(report: dict[str, Any], console: Console) -> None:
    """The served completion and the load figures."""
    load = report["load"]
    console.print(
        f"[bold]canary[/]: Triton served {report['model']} v{report['version']}: {report['prompt']!r} -> {report['completion']!r}"
    )
    for name, variant in (report.get("variants") or {}).items():
        console.print(f"  beside it, {name} v{variant['version']}: {report['prompt']!r} -> {variant['completion']!r}")
    if "fim" in report:
        console.print(
            f"  gateway (OpenAI API), FIM: {report['prompt']!r} + <middle> + {report['fim']['suffix']!r} -> "
            f"{report['fim']['completion']!r}"
        )
    console.print(
        f"  {load['clients']} clients x {load['seconds']:.0f}s: {load['requests']} requests, {load['failures']} failed, "
        f"p50 {load['p50_s'] * 1000:.0f} ms, p95 {load['p95_s'] * 1000:.0f} ms, "
        f"first token p50 {load['ttft_p50_s'] * 1000:.0f} ms, {load['tokens_per_s']:.0f} tokens/s"
    )
