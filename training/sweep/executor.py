"""A sweep: the train stage training several candidate models at once and keeping the best.

Profile (``profiler``) -> solve (``schedule``) -> run the candidates concurrently on their device sets
as planned, re-planning the ones not started when a job ends off its prediction -> evaluate each
(validation loss, and HumanEval through the ``Score`` the roof hands in) -> register the best by
``sweep.metric``, whose export becomes the train stage's output, so the eval stage gates it like any
trained model. Candidates live under ``<profile>/sweep/candidates/<name>-<fingerprint>/`` and trials in
``<profile>/sweep/trials.json``: a rerun skips finished candidates and reuses trials, across retrains.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from lathe.core.errors import LatheError
from lathe.core.stage import StageContext, StageResult
from lathe.core.tracking import flatten, mlflow_key
from lathe.training.job import METRICS, MODEL_DIR, SUMMARY, TrainJob
from lathe.training.launcher import Devices, launch
from lathe.training.mixture import run_samples
from lathe.training.pretrain import TrainSections, build_job, print_train, registered_summary, train_result
from lathe.training.sweep.config import Score, candidate_fingerprint, sweep_candidates
from lathe.training.sweep.profiler import Choice, Trial, TrialCache, describe, options, profile
from lathe.training.sweep.schedule import (
    Assignment,
    Busy,
    Job,
    Plan,
    check_plan,
    draw_gantt,
    even_split_makespan,
    sequential_makespan,
    solve,
)

CANDIDATE = "candidate.json"  # written last in a candidate's folder: its figures (it finished)


@dataclass
class Candidate:
    """One candidate of this sweep and what became of it."""

    name: str
    fingerprint: str
    dir: Path
    job: TrainJob
    trials: dict[Choice, Trial] = field(default_factory=dict)
    status: str = "pending"  # pending | reused | trained | failed | infeasible
    reason: str = ""
    assignment: Assignment | None = None
    started: float | None = None  # seconds since the sweep's jobs began
    ended: float | None = None
    figures: dict[str, float] = field(default_factory=dict)

    def batches(self) -> tuple[int, int]:
        """(training batches, validation batches) of the whole job, for the duration prediction."""
        tc = self.job.train
        epoch = sum(d.choose or 0 for d in self.job.streams)
        train = -(
            -run_samples(tc.max_duration, tc.global_train_batch_size, self.job.seq_len, epoch) // tc.global_train_batch_size
        )
        interval = int(tc.eval_interval[:-2]) if tc.eval_interval.endswith("ba") else train
        per_eval = tc.eval_subset_num_batches if tc.eval_subset_num_batches > 0 else 8  # -1: the split; 8 is a guess
        evaluations = 2 + train // max(1, interval)  # before, every interval, after
        return train, evaluations * per_eval * len(self.job.validation)


def devices_here(requested: int | None) -> tuple[int, bool]:
    """How many devices the sweep shares and whether they are GPUs (else CPU cores)."""
    import os

    import torch

    gpu = torch.cuda.is_available()
    have = torch.cuda.device_count() if gpu else (len(os.sched_getaffinity(0)) or 1)
    if requested is not None and requested > have:
        raise LatheError(f"sweep.devices={requested} but this node has {have} {'GPUs' if gpu else 'CPU cores'}; lower it")
    return requested or have, gpu


def run_sweep(ctx: StageContext[TrainSections], score: Score | None) -> StageResult:
    """Train every candidate of ``sweep`` jointly scheduled, evaluate them, register the best."""
    import mlflow

    from lathe.training.trainer import preflight

    cfg, console = ctx.config, ctx.console
    assert isinstance(cfg, BaseModel)  # the run's whole config (the train stage's), so each candidate copies it
    sweep = cfg.sweep
    named = sweep_candidates(cfg.train, sweep)
    if not named:
        raise LatheError("sweep.enabled but the sweep has no candidates; list sweep.candidates or a sweep.grid")
    workspace = ctx.out_dir.parent / "sweep"
    inputs = {name: str(up.manifest.get("fingerprint", "")) for name, up in ctx.inputs.items()}
    parent = mlflow.active_run()
    candidates = []
    for name, train in named:
        fp = candidate_fingerprint(train, inputs)
        folder = workspace / "candidates" / f"{name}-{fp}"
        folder.mkdir(parents=True, exist_ok=True)
        job, _ = build_job(
            cfg.model_copy(update={"train": train}),
            ctx.inputs,
            folder,
            f"{cfg.profile}-sweep-{name}-{fp}",
            Console(quiet=True),
            mlflow.get_tracking_uri(),
        )
        preflight(job)  # bad input fails here, before any trial
        candidates.append(Candidate(name, fp, folder, job))
    devices, gpu = devices_here(sweep.devices)
    for c in candidates:
        if (c.dir / CANDIDATE).is_file():
            c.status, c.figures = "reused", json.loads((c.dir / CANDIDATE).read_text())["figures"]
    todo = [c for c in candidates if c.status == "pending"]
    console.print(
        f"sweep: {len(candidates)} candidates on {devices} {'GPU' if gpu else 'CPU core'}(s); "
        f"{len(candidates) - len(todo)} finished earlier"
    )
    plan = None
    if todo:
        trials = profile(
            {c.name: c.job for c in todo},
            sweep,
            devices,
            gpu,
            TrialCache(workspace / "trials.json"),
            workspace / "trials",
            console,
        )
        jobs = []
        for c in todo:
            c.trials = trials[c.name]
            train_batches, eval_batches = c.batches()
            feasible = options(c.trials, partial(Trial.predict, batches=train_batches, eval_batches=eval_batches))
            if feasible:
                jobs.append(Job(c.name, feasible))
            else:
                c.status, c.reason = (
                    "infeasible",
                    "no device count or parallelism fits: "
                    + "; ".join(f"{ch.devices}x {ch.parallelism}: {describe(t)}" for ch, t in c.trials.items()),
                )
                console.print(f"[yellow]{c.name}[/]: {c.reason}")
        if jobs:
            plan = solve(jobs, devices, time_limit_s=sweep.solver_time_limit_s)
            write_plan(plan, jobs, ctx.out_dir, "plan")
            print_plan(plan, jobs, console)
            plan = execute(
                plan,
                jobs,
                {c.name: c for c in todo},
                devices,
                gpu,
                sweep.replan_margin,
                sweep.solver_time_limit_s,
                sweep.device_memory_mb,
                ctx.out_dir,
                console,
            )
        for c in todo:
            if c.status == "trained":
                c.figures = evaluate(c, cfg, score if sweep.evaluate else None, parent.info.run_id if parent else None)
    return pick(candidates, cfg, ctx, plan, parent.info.run_id if parent else None)


def train_one(c: Candidate, a: Assignment, gpu: bool, memory_mb: int | None) -> None:
    """Train candidate ``c`` as assigned (blocking: the sweep runs each in a thread)."""
    choice = Choice(a.option.devices, a.option.parallelism, a.option.activation_checkpointing)
    job = c.job.model_copy(update={"train": choice.apply(c.job.train), "device_memory_mb": memory_mb})
    launch(job, choice.devices, c.dir, Devices(a.devices, gpu))


def execute(
    plan: Plan,
    jobs: list[Job],
    by_name: dict[str, Candidate],
    devices: int,
    gpu: bool,
    margin: float,
    time_limit_s: float,
    memory_mb: int | None,
    out_dir: Path,
    console: Console,
) -> Plan:
    """Run the planned jobs, each as soon as its devices are free and no job planned before it on them
    waits; re-plan the jobs not started when one ends more than ``margin`` off its prediction.
    Returns the plan as run (assignments with their measured start and end)."""
    pending = {j.name: j for j in jobs}
    current = plan.by_name()
    running: dict[Future[None], Candidate] = {}
    busy: set[int] = set()
    ran: list[Assignment] = []
    began = time.perf_counter()
    replans = 0
    with ThreadPoolExecutor(max_workers=max(1, devices)) as pool:
        while pending or running:
            for a in sorted((current[n] for n in pending), key=lambda a: (a.start, a.name)):
                earlier = [b for b in current.values() if b.name in pending and (b.start, b.name) < (a.start, a.name)]
                if busy & set(a.devices) or any(set(b.devices) & set(a.devices) for b in earlier):
                    continue
                c = by_name[a.name]
                c.assignment, c.started = a, time.perf_counter() - began
                busy |= set(a.devices)
                del pending[a.name]
                console.print(
                    f"start {a.name} on devices {list(a.devices)} ({a.option.label}), predicted {a.option.seconds:.0f} s"
                )
                running[pool.submit(train_one, c, a, gpu, memory_mb)] = c
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            now = time.perf_counter() - began
            off = False
            for future in done:
                c = running.pop(future)
                assert c.assignment is not None and c.started is not None
                c.ended = now
                busy -= set(c.assignment.devices)
                took, predicted = now - c.started, c.assignment.option.seconds
                error = future.exception()
                c.status, c.reason = ("failed", str(error)) if error else ("trained", "")
                console.print(
                    f"{c.name} {c.status} after {took:.0f} s (predicted {predicted:.0f} s)" + (f": {c.reason}" if error else "")
                )
                ran.append(Assignment(c.name, c.assignment.option, c.assignment.devices, c.started, now))
                off = off or abs(took - predicted) > margin * predicted
            if off and pending:  # the rest of the plan was built on a prediction that did not hold
                still = [
                    Busy(c.name, c.assignment.devices, max(0.1, c.started + c.assignment.option.seconds - now))
                    for c in running.values()
                    if c.assignment is not None and c.started is not None
                ]
                replan = solve(list(pending.values()), devices, still, time_limit_s)
                replans += 1
                console.print(f"re-planned {len(pending)} job(s): predicted makespan {now + replan.makespan:.0f} s")
                current = {
                    a.name: Assignment(a.name, a.option, a.devices, now + a.start, now + a.end) for a in replan.assignments
                }
                write_plan(replan, list(pending.values()), out_dir, f"replan-{replans}")
    measured = Plan(
        sorted(ran, key=lambda a: (a.start, a.name)),
        max((a.end for a in ran), default=0.0),
        plan.lower_bound,
        plan.status,
        plan.solve_s,
        devices,
    )
    measured_json = measured.to_json() | {"predicted_makespan_s": plan.makespan, "replans": replans}
    (out_dir / "measured.json").write_text(json.dumps(measured_json, indent=2))
    draw_gantt(plan, out_dir / "gantt.png", {a.name: (a.start, a.end) for a in ran})
    return measured


def write_plan(plan: Plan, jobs: list[Job], out_dir: Path, name: str) -> Path:
    """``<name>.json``: the plan, the two common practices' makespans and every option it chose among."""
    problems = check_plan(plan)
    if problems:  # the scheduler's output is checked, never trusted
        raise AssertionError(f"the sweep's plan breaks its own rules: {problems}")
    record = plan.to_json() | {
        "sequential_makespan_s": sequential_makespan(jobs, plan.devices),
        "even_split_makespan_s": even_split_makespan(jobs, plan.devices),
        "options": {j.name: [{"option": o.label, "devices": o.devices, "seconds": o.seconds} for o in j.options] for j in jobs},
    }
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=2))
    return path


def print_plan(plan: Plan, jobs: list[Job], console: Console) -> None:
    """The plan on one screen, with what the common practices would take."""
    table = Table("candidate", "devices", "option", "start s", "predicted s", title="sweep plan")
    for a in plan.assignments:
        table.add_row(a.name, ",".join(map(str, a.devices)), a.option.label, f"{a.start:.0f}", f"{a.end - a.start:.0f}")
    console.print(table)
    console.print(
        f"predicted makespan {plan.makespan:.0f} s ({plan.status.lower()}, gap {plan.gap:.1%}, solved in "
        f"{plan.solve_s:.1f} s); one after another on all devices {sequential_makespan(jobs, plan.devices):.0f} s, "
        f"even split {even_split_makespan(jobs, plan.devices):.0f} s"
    )


def evaluate(c: Candidate, cfg: Any, score: Score | None, parent_run: str | None) -> dict[str, float]:
    """The candidate's figures (validation losses, and ``score``'s pass@k), logged to its MLflow child run with
    its config; written to its folder last, so a rerun reuses them."""
    import mlflow

    summary = json.loads((c.dir / SUMMARY).read_text())
    figures = {
        k: float(summary[s])
        for k, s in (("val_loss", "final_val_loss"), ("replay_val_loss", "final_replay_val_loss"))
        if summary.get(s) is not None
    }
    if score is not None:
        figures |= score(c.dir / MODEL_DIR, c.dir / "eval", cfg)
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(cfg.run.experiment)
    if experiment is None:  # the runner's setup_tracking made it; deleted since
        raise LatheError(f"MLflow experiment {cfg.run.experiment!r} not found; rerun the pipeline to recreate it")
    tags = {"lathe.profile": cfg.profile, "lathe.sweep_candidate": c.name, "lathe.fingerprint": c.fingerprint}
    if parent_run:
        tags["mlflow.parentRunId"] = parent_run
    run = client.create_run(experiment.experiment_id, run_name=f"sweep/{c.name}", tags=tags)
    params = flatten(c.job.train.model_dump(mode="json"), "train.")
    if c.assignment:
        params |= {"sweep.devices": str(c.assignment.option.devices), "sweep.option": c.assignment.option.label}
    items = list(params.items())
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params a call
        client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in items[start : start + 100]])
    for key, value in figures.items():
        client.log_metric(run.info.run_id, mlflow_key(key), value)
    if c.started is not None and c.ended is not None:
        client.log_metric(run.info.run_id, "sweep_seconds", c.ended - c.started)
    client.set_terminated(run.info.run_id)
    (c.dir / CANDIDATE).write_text(json.dumps({"name": c.name, "figures": figures, "mlflow_run_id": run.info.run_id}, indent=2))
    return figures


def pick(candidates: list[Candidate], cfg: Any, ctx: StageContext[Any], plan: Plan | None, parent_run: str | None) -> StageResult:
    """Register the best candidate by ``sweep.metric``; its export is the stage's model."""
    sweep = cfg.sweep
    scored = [c for c in candidates if sweep.metric in c.figures]
    if not scored:
        reasons = "; ".join(f"{c.name}: {c.status} {c.reason}".strip() for c in candidates)
        raise LatheError(
            f"no sweep candidate has a {sweep.metric} figure ({reasons}); see the rank logs in "
            f"{ctx.out_dir.parent / 'sweep' / 'candidates'}"
        )
    best = (min if sweep.lower_is_better() else max)(scored, key=lambda c: c.figures[sweep.metric])
    summary = json.loads((best.dir / SUMMARY).read_text())
    draws = best.job.streams
    run_id = json.loads((best.dir / CANDIDATE).read_text())["mlflow_run_id"] if parent_run else None
    summary = registered_summary(
        cfg,
        ctx.fingerprint,
        ctx.inputs["shards"],
        best.job,
        draws,
        summary,
        best.dir / MODEL_DIR,
        best.dir / METRICS,
        run_id,
        {"lathe.sweep_candidate": best.name},
    )
    summary["sweep"] = {
        "metric": sweep.metric,
        "winner": best.name,
        "candidates": [
            {
                "name": c.name,
                "status": c.status,
                "reason": c.reason,
                "figures": c.figures,
                "dir": str(c.dir),
                "option": c.assignment.option.label if c.assignment else None,
                "devices": list(c.assignment.devices) if c.assignment else None,
                "seconds": None if c.started is None or c.ended is None else c.ended - c.started,
            }
            for c in candidates
        ],
    }
    summary_file = Path(ctx.outputs["summary"])
    summary_file.write_text(json.dumps(summary, indent=2))
    print_sweep(summary, ctx.console)
    print_train(summary, ctx.console)
    artifacts = [
        p
        for p in (summary_file, ctx.out_dir / "plan.json", ctx.out_dir / "measured.json", ctx.out_dir / "gantt.png")
        if p.is_file()
    ]
    return train_result(summary, artifacts, {"model": str(best.dir / MODEL_DIR), "metrics": str(best.dir / METRICS)})


def print_sweep(summary: dict[str, Any], console: Console) -> None:
    """Every candidate's figures side by side, the winner marked."""
    sweep = summary["sweep"]
    keys = sorted({k for c in sweep["candidates"] for k in c["figures"]})
    table = Table("candidate", "status", "option", "seconds", *keys, title=f"sweep (by {sweep['metric']})")
    for c in sweep["candidates"]:
        mark = " *" if c["name"] == sweep["winner"] else ""
        table.add_row(
            c["name"] + mark,
            c["status"],
            c["option"] or "",
            "" if c["seconds"] is None else f"{c['seconds']:.0f}",
            *(f"{c['figures'][k]:.4f}" if k in c["figures"] else "" for k in keys),
        )
    console.print(table)
