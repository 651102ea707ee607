"""`lathe serve` (Triton in the foreground) and `lathe complete` (stream a completion from it)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from lathe.core.errors import LatheError
from lathe.core.models import MODEL_NAME
from lathe.pipelines.cli.app import ConfigOpt, SetOpt, app, console, load

if TYPE_CHECKING:
    from lathe.pipelines.config import LatheConfig
    from lathe.serving.config import ServeConfig
    from lathe.serving.server import TritonServer


@app.command()
def serve(
    config: Path = ConfigOpt,
    set_: list[str] | None = SetOpt,
    repository: Path | None = typer.Option(None, "--repository", help="Triton model repository; default the package stage's."),
    http_port: int | None = typer.Option(None, "--http-port", help="HTTP port (default serve.http_port, 8000; 0 = free)."),
    grpc_port: int | None = typer.Option(None, "--grpc-port", help="gRPC port (default serve.grpc_port, 8001; 0 = free)."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Prometheus port (default serve.metrics_port, 8002)."),
    api_port: int | None = typer.Option(
        None, "--api-port", help="OpenAI-compatible gateway port (default serve.gateway.port, 8080; 0 = free; -1 = Triton alone)."
    ),
) -> None:
    """Serve the packaged model in the foreground until Ctrl-C: tritonserver and the OpenAI-compatible gateway in front of it."""
    from lathe.pipelines.runner import finished
    from lathe.serving.server import TritonServer, free_port, port_busy

    cfg = load(config, set_)
    s = cfg.serve
    if repository is None:
        try:
            repository = finished("package", Path(cfg.run.runs_dir) / cfg.profile / "package").path("repository")
        except LatheError:
            raise LatheError(
                "no packaged model repository; run `lathe run package` (or `make package`) first, or pass --repository"
            ) from None
    if not repository.is_dir():
        raise LatheError(f"model repository {repository} not found; run `lathe run package` (or `make package`) first")
    api = s.gateway.port if api_port is None else api_port
    if api == 0:
        api = free_port()
    if api > 0 and port_busy(api):
        raise LatheError(f"gateway port {api} is in use; stop what holds it or pass another --api-port")
    server = TritonServer(
        repository,
        s.http_port if http_port is None else http_port,
        s.grpc_port if grpc_port is None else grpc_port,
        s.metrics_port if metrics_port is None else metrics_port,
        ready_timeout_s=s.ready_timeout_s,
        stop_timeout_s=s.stop_timeout_s,
    )
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:  # Ctrl-C or SIGTERM: leave the loop, then stop the server
        stop["now"] = True

    # installed before the gateway runs: uvicorn restores these and hands them the signal it caught
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with server:
        e = server.endpoints
        console.print(
            f"[bold]serving[/] {s.model_name} from {repository}\n  HTTP    {e.http}  (POST /v2/models/{s.model_name}/generate)\n"
            f'  gRPC    {e.grpc}  (lathe complete "def f(" --url {e.grpc})\n  metrics {e.metrics}'
        )
        if api > 0:
            died = _run_gateway(cfg.serve, server, api, telemetry_url(cfg), stop)
        else:
            console.print("Ctrl-C stops it.")
            while not stop["now"] and not _exited(server):
                time.sleep(0.2)
            died = _exited(server)
    if died:
        raise LatheError("tritonserver exited on its own; rerun `lathe serve` and check the ports and the repository")
    console.print("stopped")


def telemetry_url(cfg: LatheConfig) -> str:
    """The telemetry store's URL: serve.gateway.telemetry_url, else SQLite in the profile's runs directory."""
    path = (Path(cfg.run.runs_dir) / cfg.profile / "serve" / "telemetry.db").resolve()
    return cfg.serve.gateway.telemetry_url or f"sqlite:///{path}"


def _exited(server: TritonServer) -> bool:
    return server.process is not None and server.process.poll() is not None


def _run_gateway(s: ServeConfig, server: TritonServer, port: int, telemetry_url: str, stop: dict[str, bool]) -> bool:
    """The gateway in the foreground until a signal or Triton's death; returns whether Triton died."""
    from lathe.serving.gateway import serve_gateway

    gateway = serve_gateway(s.gateway, server.endpoints.grpc, s.model_name, telemetry_url, port)
    died = threading.Event()

    def watch() -> None:  # a dead Triton leaves the gateway nothing to serve: take it down too
        while not gateway.should_exit:
            if _exited(server):
                died.set()
                gateway.should_exit = True
            time.sleep(0.2)

    console.print(
        f"  API     http://{s.gateway.host}:{port}/v1  (OpenAI-compatible: /v1/completions, /v1/models)\nCtrl-C stops it."
    )
    threading.Thread(target=watch, name="triton-watch", daemon=True).start()
    if not stop["now"]:
        gateway.run()
    gateway.should_exit = True
    return died.is_set()


@app.command()
def complete(
    prompt: str = typer.Argument(..., help="The code to complete."),
    url: str = typer.Option("127.0.0.1:8001", "--url", help="Triton gRPC address."),
    model: str = typer.Option(MODEL_NAME, "--model", help="Triton model name."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Tokens to generate at most."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass."),
    stop: list[str] | None = typer.Option(None, "--stop", help="Stop sequence (repeatable)."),
    seed: int | None = typer.Option(None, "--seed", help="Sampling seed."),
    suffix: str | None = typer.Option(None, "--suffix", help="The code after the cursor: the model fills in the middle."),
) -> None:
    """Stream a completion from a running server over gRPC, printing tokens as they arrive."""
    from lathe.serving.client import stream_completion

    params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
    if stop:
        params["stop"] = list(stop)
    if seed is not None:
        params["seed"] = seed
    if suffix is not None:
        params["suffix"] = suffix
    finish = None
    for i, chunk in enumerate(stream_completion(url, prompt, model, **params)):
        sys.stdout.write((prompt if i == 0 else "") + chunk.text)
        sys.stdout.flush()
        finish = chunk.finish
    sys.stdout.write((suffix or "") + "\n")
    Console(stderr=True).print(f"[dim]finish: {finish}[/]")


@app.command()
def gateway(
    config: Path = ConfigOpt,
    set_: list[str] | None = SetOpt,
    triton_url: str | None = typer.Option(None, "--triton-url", help="Triton gRPC address (default serve.gateway.triton_url)."),
    host: str | None = typer.Option(None, "--host", help="Address to bind (default serve.gateway.host)."),
    port: int | None = typer.Option(None, "--port", help="Port (default serve.gateway.port, 8080)."),
) -> None:
    """The OpenAI-compatible gateway alone, in front of a Triton server elsewhere (its own Deployment in Kubernetes)."""
    from lathe.serving.gateway import serve_gateway

    cfg = load(config, set_)
    s = cfg.serve
    g = s.gateway.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    url = triton_url or g.triton_url
    console.print(f"[bold]gateway[/] http://{g.host}:{g.port}/v1 -> Triton {url} ({s.model_name})")
    serve_gateway(g, url, s.model_name, telemetry_url(cfg)).run()


api_key = typer.Typer(help="API keys of the gateway (stored as SHA-256 digests).", no_args_is_help=True)
app.add_typer(api_key, name="api-key")


@api_key.command("new")
def api_key_new(
    file: Path = typer.Option(..., "--file", help="Key file to append the new key's digest to (serve.gateway.api_keys_file)."),
    name: str = typer.Option("", "--name", help="A label stored beside the digest (who the key is for)."),
) -> None:
    """Make a new API key: its digest is appended to FILE, the key itself is printed once and stored nowhere."""
    import secrets

    from lathe.serving.gateway import key_digest

    key = f"lathe-{secrets.token_urlsafe(24)}"
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "a") as out:
        out.write(f"{key_digest(key)}  # {name}\n" if name else f"{key_digest(key)}\n")
    file.chmod(0o600)
    print(key)


ab = typer.Typer(help="A/B between served versions, from the gateway's acceptance telemetry.", no_args_is_help=True)
app.add_typer(ab, name="ab")


@ab.command("report")
def ab_report(
    config: Path = ConfigOpt,
    set_: list[str] | None = SetOpt,
    url: str | None = typer.Option(None, "--url", help="Telemetry store URL (default the profile's)."),
) -> None:
    """Acceptance rate per arm and language, with 95% intervals and a two-proportion test, and which arm is ahead."""
    from rich.table import Table

    from lathe.serving.ab import compare, tally, wilson
    from lathe.serving.telemetry import TelemetryStore

    cfg = load(config, set_)
    store = TelemetryStore(url or telemetry_url(cfg))
    cells = tally(store.outcomes())
    if not cells:
        raise LatheError(
            f"no editor events in {store.engine.url.render_as_string(hide_password=True)} yet; "
            "editors report them to the gateway's /v1/events"
        )
    table = Table(title="acceptance by track and language (accepted / shown suggestions)")
    for column in ("track", "versions", "language", "shown", "accepted", "rate", "95% interval"):
        table.add_column(column, justify="right" if column in ("shown", "accepted", "rate", "95% interval") else "left")
    for (track, language), cell in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1] != "all", kv[0][1])):
        lo, hi = wilson(cell.accepted, cell.shown)
        table.add_row(
            track,
            ",".join(sorted(cell.versions)),
            language,
            str(cell.shown),
            str(cell.accepted),
            f"{cell.rate:.1%}",
            f"{lo:.1%} - {hi:.1%}",
        )
    console.print(table)
    for comparison in compare(cells, cfg.serve.gateway.ab.min_shown, cfg.serve.gateway.ab.alpha):
        console.print(f"[bold]{comparison.language}[/]: {comparison.verdict}")


feedback = typer.Typer(help="Editor feedback as training data.", no_args_is_help=True)
app.add_typer(feedback, name="feedback")


@feedback.command("export")
def feedback_export(
    output: Path = typer.Option(..., "--output", help="Directory for pairs.jsonl and labelled.jsonl."),
    config: Path = ConfigOpt,
    set_: list[str] | None = SetOpt,
    url: str | None = typer.Option(None, "--url", help="Telemetry store URL (default the profile's)."),
) -> None:
    """Accepted and dismissed completions as preference data: chosen/rejected pairs per prompt, and labelled rows."""
    from lathe.serving.telemetry import TelemetryStore, export_preferences

    cfg = load(config, set_)
    counts = export_preferences(TelemetryStore(url or telemetry_url(cfg)), output)
    # soft_wrap: paths stay whole on one line whatever the terminal's width (scripts read this line)
    console.print(
        f"{counts['pairs']} preference pair(s) -> {output / 'pairs.jsonl'}; "
        f"{counts['labelled']} labelled completion(s) -> {output / 'labelled.jsonl'}",
        soft_wrap=True,
    )
