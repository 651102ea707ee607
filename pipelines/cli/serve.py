"""`lathe serve` (Triton in the foreground) and `lathe complete` (stream a completion from it)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from lathe.core.errors import LatheError
from lathe.core.models import MODEL_NAME
from lathe.pipelines.cli.app import ConfigOpt, SetOpt, app, console, load


@app.command()
def serve(
    config: Path = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    repository: Optional[Path] = typer.Option(None, "--repository", help="Triton model repository; default the package stage's."),
    http_port: Optional[int] = typer.Option(None, "--http-port", help="HTTP port (default serve.http_port, 8000; 0 = free)."),
    grpc_port: Optional[int] = typer.Option(None, "--grpc-port", help="gRPC port (default serve.grpc_port, 8001; 0 = free)."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Prometheus port (default serve.metrics_port, 8002)."),
) -> None:
    """Serve the packaged model with tritonserver in the foreground until Ctrl-C."""
    from lathe.pipelines.runner import finished
    from lathe.serving.server import TritonServer

    cfg = load(config, set_)
    s = cfg.serve
    if repository is None:
        try:
            repository = finished("package", Path(cfg.run.runs_dir) / cfg.profile / "package").path("repository")
        except LatheError:
            raise LatheError("no packaged model repository; run `lathe run package` (or `make package`) first, or pass --repository") from None
    if not repository.is_dir():
        raise LatheError(f"model repository {repository} not found; run `lathe run package` (or `make package`) first")
    server = TritonServer(repository, s.http_port if http_port is None else http_port, s.grpc_port if grpc_port is None else grpc_port,
                          s.metrics_port if metrics_port is None else metrics_port, ready_timeout_s=s.ready_timeout_s,
                          stop_timeout_s=s.stop_timeout_s)
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:  # Ctrl-C or SIGTERM: leave the loop, then stop the server
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with server:
        e = server.endpoints
        console.print(f"[bold]serving[/] {s.model_name} from {repository}\n  HTTP    {e.http}  (POST /v2/models/{s.model_name}/generate)\n"
                      f"  gRPC    {e.grpc}  (lathe complete \"def f(\" --url {e.grpc})\n  metrics {e.metrics}\nCtrl-C stops it.")
        while not stop["now"] and server.process is not None and server.process.poll() is None:
            time.sleep(0.2)
        died = server.process is not None and server.process.poll() is not None
    if died:
        raise LatheError("tritonserver exited on its own; rerun `lathe serve` and check the ports and the repository")
    console.print("tritonserver stopped")


@app.command()
def complete(
    prompt: str = typer.Argument(..., help="The code to complete."),
    url: str = typer.Option("127.0.0.1:8001", "--url", help="Triton gRPC address."),
    model: str = typer.Option(MODEL_NAME, "--model", help="Triton model name."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Tokens to generate at most."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass."),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="Stop sequence (repeatable)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed."),
) -> None:
    """Stream a completion from a running server over gRPC, printing tokens as they arrive."""
    from lathe.serving.client import stream_completion

    params: dict[str, object] = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
    if stop:
        params["stop"] = list(stop)
    if seed is not None:
        params["seed"] = seed
    finish = None
    for i, chunk in enumerate(stream_completion(url, prompt, model, **params)):
        sys.stdout.write((prompt if i == 0 else "") + chunk.text)
        sys.stdout.flush()
        finish = chunk.finish
    sys.stdout.write("\n")
    Console(stderr=True).print(f"[dim]finish: {finish}[/]")
