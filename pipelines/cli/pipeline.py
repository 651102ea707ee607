"""Commands over the pipeline: run stages, train, sweep, the gate's decision, the summary, replaying a loss spike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lathe.core.errors import LatheError
from lathe.pipelines.cli.app import ConfigOpt, SetOpt, app, console, load, tracked_config

if TYPE_CHECKING:
    from lathe.pipelines.config import LatheConfig


@app.command()
def run(
    stages: list[str] | None = typer.Argument(None, help="Stages to run (with their upstream); default all."),
    config: Path = ConfigOpt,
    set_: list[str] | None = SetOpt,
    force: bool = typer.Option(False, "--force", help="Rerun the named stages (all, if none named) even if done."),
) -> None:
    """Run pipeline stages, skipping the ones whose manifest fingerprint matches."""
    from lathe.pipelines.runner import run_pipeline

    outcomes = run_pipeline(load(config, set_), stages or None, force=force, console=console)
    console.print(
        "stages: " + ", ".join(f"{o.name} ({o.status}{f', {o.duration_s:.0f}s' if o.status == 'ran' else ''})" for o in outcomes)
    )


@app.command()
def train(
    config: Path = ConfigOpt,
    set_: list[str] | None = SetOpt,
    nproc: int | None = typer.Option(None, "--nproc", help="Processes per node (Composer launcher)."),
    force: bool = typer.Option(False, "--force", help="Retrain from scratch even if done."),
) -> None:
    """Train the model (running the stages it needs first); --nproc N for DDP on N processes.

    Multi-node: every node runs this command with NODE_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
    set (as the Kubernetes Indexed Job does); node 0 runs the stage, the others join its job.
    """
    from lathe.pipelines.runner import planned, run_pipeline
    from lathe.training.pretrain import join_training, node_rank

    cfg = load(config, [*(set_ or []), *([f"train.nproc={nproc}"] if nproc else [])])
    if node_rank() > 0:
        inputs, fingerprint = planned(cfg, "train")
        out = join_training(cfg, inputs, fingerprint, console)
        console.print(f"node {node_rank()} finished its ranks; logs in {out / 'logs'}")
        return
    run_pipeline(cfg, ["train"], force=force, console=console)


@app.command()
def sweep(
    config: Path = ConfigOpt,
    set_: list[str] | None = SetOpt,
    force: bool = typer.Option(False, "--force", help="Rerun the sweep even if done (finished candidates are still reused)."),
) -> None:
    """Train the config's sweep candidates jointly scheduled on this node's devices, register the best and gate it.

    Profiles each candidate, solves the plan (plan.json, gantt.png in the train stage's folder), runs the
    candidates concurrently, evaluates each as an MLflow child run, then runs the eval stage's gate.
    """
    from lathe.pipelines.runner import run_pipeline

    cfg = load(config, [*(set_ or []), "sweep.enabled=true"])
    if not cfg.sweep.candidates and not cfg.sweep.grid:
        raise LatheError(f"{config}: the sweep section lists no candidates; add sweep.candidates or sweep.grid")
    run_pipeline(cfg, ["train"], force=force, console=console)
    run_pipeline(cfg, ["eval"], console=console)


@app.command()
def gate(
    config: Path = ConfigOpt,
    set_: list[str] | None = SetOpt,
    xcom: Path | None = typer.Option(None, "--xcom", help="Also write the decision here (a pod's /airflow/xcom/return.json)."),
    stage: str = typer.Option(
        "eval",
        "--stage",
        help="The gate stage: eval (pretraining), sft_eval or dpo_eval (post-training), "
        "quantize_eval or distill_eval (smaller variants).",
    ),
) -> None:
    """Run a gate stage (if not done) and print the gate's decision as JSON on the last line (for schedulers)."""
    from lathe.pipelines.runner import run_pipeline

    outcome = run_pipeline(load(config, set_), [stage], console=console)[-1]
    results = Path(outcome.manifest["outputs"]["results"])
    g = json.loads(results.read_text()).get("gate")
    if not g:
        raise LatheError(f"{results} holds no gate decision (no registered candidate); check train.registered_model")
    decision = json.dumps({"passed": g["passed"], "version": g["candidate_version"], "reason": g["reason"]})
    if xcom:
        xcom.parent.mkdir(parents=True, exist_ok=True)
        xcom.write_text(decision)
    print(decision)


@app.command()
def summary(
    config: Path = ConfigOpt,
    set_: list[str] | None = SetOpt,
) -> None:
    """One screen: data kept/dropped, bytes/token, validation loss, pass@k, gate, serving latency, aliases, artifacts."""
    from lathe.core.models import ModelRegistry
    from lathe.pipelines.summary import print_summary

    cfg = tracked_config(config, set_)
    name = cfg.train.registered_model
    registry = ModelRegistry(name)
    aliases, dangling = registry.aliases(), registry.dangling()
    shown = ", ".join(
        f"{a} -> v{v}" + (" [red](no such version!)[/]" if a in dangling else "") for a, v in sorted(aliases.items())
    )
    extra = [("registry", shown, name)] if aliases else []
    print_summary(Path(cfg.run.runs_dir) / cfg.profile, console, extra)


@app.command("replay-spike")
def replay_spike(
    run_dir: Path | None = typer.Option(None, "--run", help="The train stage's folder (default: the profile's)."),
    config: Path = ConfigOpt,
    set_: list[str] | None = SetOpt,
    step: int | None = typer.Option(None, "--step", help="Spike step (default: the first logged)."),
    shards: list[str] | None = typer.Option(
        None, "--shards", help="Train split(s), in mixture order; default the ones it trained on."
    ),
) -> None:
    """Reload a logged loss-spike batch from the shards and score it with the exported model."""
    from lathe.pipelines.runner import finished
    from lathe.tokenizer.special import PAD
    from lathe.tokenizer.vocab import load_tokenizer
    from lathe.training.job import SPIKES
    from lathe.training.replay import load_batch, read_spike, replay_loss

    cfg = load(config, set_)
    trained = finished("train", run_dir or Path(cfg.run.runs_dir) / cfg.profile / "train")
    record = read_spike(trained.dir / SPIKES, step)
    splits = shards or [f"{d['uri']}/train" for d in trained.details.get("mixture", []) if d["choose"]]
    model = trained.path("model")
    batch = load_batch(splits, record, load_tokenizer(model).token_to_id(PAD), trained.dir / "stream-cache" / "replay")
    loss = replay_loss(model, batch)
    console.print(
        json.dumps(
            {
                "step": record["step"],
                "logged_loss": record["loss"],
                "replayed_loss_final_model": loss,
                "samples": [(s.get("stream", 0), s["shard"], s["position"]) for s in record["samples"]],
            }
        )
    )


# `lathe finetune --method`: the stage a method runs and whether it trains LoRA adapters.
METHODS = {"sft": ("sft", False), "sft-lora": ("sft", True), "dpo": ("dpo", False), "dpo-lora": ("dpo", True)}


def finetune_overrides(method: str, data: str | None, source: str | None) -> list[str]:
    """The ``--set`` overrides `lathe finetune` stands for: the method's section, its data, its starting model."""
    if method not in METHODS:
        raise LatheError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    section, lora = METHODS[method]
    sets = [f"{section}.lora={{}}" if lora else f"{section}.lora=null"]
    if source:
        sets.append(f"{section}.init_from={source}")
    if data and section == "sft":  # the file replaces the mined pairs
        sets += [f"pairs.sft_files=[{json.dumps(data)}]", "pairs.mine=false"]
    elif data:  # the file replaces execution feedback (and self-play)
        sets += [f"pairs.preference_files=[{json.dumps(data)}]", "preferences.execution=false", "preferences.self_play=0"]
    return sets


TRAINERS = ("train", "sft", "dpo")  # the stages that register versions


def registered_by(cfg: LatheConfig, stage: str) -> str:
    """``models:/<name>/<version>`` of the version the profile's finished ``stage`` registered."""
    from lathe.pipelines.runner import finished

    details = finished(stage, Path(cfg.run.runs_dir) / cfg.profile / stage).details
    if not details.get("model_version"):
        raise LatheError(f"the {stage} stage of profile {cfg.profile} registered no version; rerun it with MLflow tracking")
    return f"models:/{details['registered_model']}/{details['model_version']}"


@app.command()
def finetune(
    method: str = typer.Option(..., "--method", help="sft, sft-lora, dpo or dpo-lora."),
    data: str | None = typer.Option(
        None,
        "--data",
        help="prompt/response (sft) or prompt/chosen/rejected (dpo) JSONL or "
        "parquet, local or object store; default: mined pairs (sft), execution feedback (dpo).",
    ),
    source: str | None = typer.Option(
        None,
        "--from",
        help="Model to tune: a models:/ URI or HF directory (default the "
        "section's init_from, models:/lathe-code@production), or a stage (train, sft, dpo): "
        "the version that stage of this profile registered.",
    ),
    config: Path = ConfigOpt,
    set_: list[str] | None = SetOpt,
    force: bool = typer.Option(False, "--force", help="Tune again even if done."),
) -> None:
    """Post-train a registered model (decontaminated data -> Composer -> a new registered version), then gate it.

    The result is registered with lathe.parent_version and lathe.method tags; the gate moves `staff` to it
    only if it matches or beats production, and `lathe promote` is still the only way to production.
    """
    from lathe.pipelines.runner import run_pipeline

    section = METHODS.get(method, ("",))[0]
    cfg = load(config, set_)
    if source in TRAINERS:  # pinned to a version, so a rerun or a retry tunes the same model
        source = registered_by(cfg, source)
    cfg = load(config, [*finetune_overrides(method, data, source), *(set_ or [])])
    outcome = run_pipeline(cfg, [section, f"{section}_eval"], force=force, console=console)[-1]
    g = json.loads(Path(outcome.manifest["outputs"]["results"]).read_text()).get("gate") or {}
    print(
        json.dumps(
            {"method": method, "version": g.get("candidate_version"), "passed": g.get("passed"), "reason": g.get("reason")}
        )
    )
