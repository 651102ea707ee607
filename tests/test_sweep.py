"""The sweep: the scheduling model (known optima, infeasible options, no device double-booked), the
profiler (trial keys, the cache, a real out-of-memory trial) and a sweep end to end through the runner
(profile -> plan -> concurrent Composer jobs -> evaluation -> the best registered -> the gate)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import mlflow
import pytest
from rich.console import Console

from lathe.core.errors import ConfigError, LatheError
from lathe.pipelines.config import load_config
from lathe.pipelines.runner import run_pipeline
from lathe.training.config import TrainConfig
from lathe.training.sweep.config import SweepConfig, sweep_candidates
from lathe.training.sweep.profiler import Choice, Trial, TrialCache, choices, profile, trial_key
from lathe.training.sweep.schedule import (
    Assignment,
    Busy,
    Job,
    Option,
    Plan,
    check_plan,
    even_split_makespan,
    sequential_makespan,
    solve,
)
from tests.conftest import SMALL_PIPELINE

QUIET = Console(quiet=True)


def ddp(devices: int, seconds: float) -> Option:
    return Option(devices, "ddp", False, seconds)


# --- the scheduling model ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "jobs, devices, optimum",
    [
        # Two jobs that scale badly: side by side on one device each (4) beats both on two in turn (3 + 3).
        ([Job("a", (ddp(1, 4), ddp(2, 3))), Job("b", (ddp(1, 4), ddp(2, 3)))], 2, 4.0),
        # Three of them on two devices: two side by side (6), then the third on both (4).
        ([Job(n, (ddp(1, 6), ddp(2, 4))) for n in "abc"], 2, 10.0),
        # A job that only fits on both devices runs alone; the two small ones share the devices around it.
        ([Job("wide", (ddp(2, 5),)), Job("b", (ddp(1, 3),)), Job("c", (ddp(1, 3),))], 2, 8.0),
        # Perfect scaling: any packing that keeps all four devices busy; area 4 x 4 / 4 = 4.
        ([Job(n, (ddp(1, 8), ddp(2, 4), ddp(4, 2))) for n in "ab"], 4, 4.0),
    ],
)
def test_the_solver_finds_known_optimal_makespans(jobs: list[Job], devices: int, optimum: float) -> None:
    plan = solve(jobs, devices, time_limit_s=10, workers=2)
    assert plan.status == "OPTIMAL" and plan.gap == 0
    assert plan.makespan == pytest.approx(optimum)
    assert check_plan(plan) == []
    assert max(a.end for a in plan.assignments) == pytest.approx(optimum)


def test_infeasible_options_never_reach_the_plan() -> None:
    # The fastest option needs four devices: on two it cannot be chosen.
    plan = solve([Job("a", (ddp(4, 1), ddp(1, 9))), Job("b", (ddp(1, 2),))], 2, workers=2)
    assert plan.by_name()["a"].option == ddp(1, 9) and plan.makespan == pytest.approx(9)
    with pytest.raises(LatheError, match="candidate big has no feasible option on 2 device"):
        solve([Job("big", (ddp(4, 1),))], 2, workers=2)


def test_re_planning_works_around_the_jobs_still_running() -> None:
    plan = solve([Job("x", (ddp(1, 3),)), Job("wide", (ddp(2, 2),))], 2, [Busy("running", (0,), 5.0)], workers=2)
    x, wide = plan.by_name()["x"], plan.by_name()["wide"]
    assert x.devices == (1,) and x.start == 0  # the free device at once
    assert wide.start == pytest.approx(5.0)  # both devices only once the running job ends
    assert plan.makespan == pytest.approx(7.0) and check_plan(plan) == []


def test_no_device_is_double_booked_on_random_instances() -> None:
    rng = random.Random(7)
    for _ in range(8):
        jobs = [
            Job(f"j{i}", tuple(ddp(d, round(rng.uniform(5, 30) / d ** rng.uniform(0.3, 1.0), 1)) for d in (1, 2, 4)))
            for i in range(rng.randint(3, 7))
        ]
        plan = solve(jobs, 4, time_limit_s=5, workers=2)
        assert check_plan(plan) == []
        area = sum(min(o.devices * o.seconds for o in j.options) for j in jobs) / 4
        assert plan.makespan >= area - 0.1 * len(jobs)  # ticks round durations up, never down
        assert plan.makespan <= sequential_makespan(jobs, 4) + 0.1 * len(jobs)


def test_the_plan_checker_catches_a_double_booking() -> None:
    option = ddp(1, 4)
    plan = Plan(
        [Assignment("a", option, (0,), 0, 4), Assignment("b", option, (0,), 2, 6), Assignment("c", ddp(2, 1), (1,), 0, 1)],
        6,
        6,
        "FEASIBLE",
        0,
        2,
    )
    problems = check_plan(plan)
    assert any("device 0 runs a and b at once" in p for p in problems)
    assert any("c runs on 1 devices, its option needs 2" in p for p in problems)


def test_the_common_practices_makespans() -> None:
    jobs = [Job(n, (ddp(1, 6), ddp(2, 4))) for n in "abc"]
    assert sequential_makespan(jobs, 2) == 12  # each on both devices, in turn
    assert even_split_makespan(jobs, 2) == 12  # one device each, round-robin: 6 + 6 on device 0


# --- candidates and the profiler ----------------------------------------------------------------------


def test_candidates_expand_and_bad_variations_are_one_line() -> None:
    sweep = SweepConfig(
        candidates=[{"name": "narrow", "set": {"train.model.d_model": 128}}],
        grid={"train.optimizer.lr": [1e-3, 3e-3], "train.max_duration": ["20ba"]},
    )
    named = sweep_candidates(TrainConfig(), sweep)
    assert [n for n, _ in named] == ["narrow", "lr=0.001+max_duration=20ba", "lr=0.003+max_duration=20ba"]
    assert named[0][1].model.d_model == 128 and named[2][1].optimizer.lr == 3e-3
    with pytest.raises(ConfigError, match="sweep candidate x: eval.ks is not a train.\\* setting"):
        sweep_candidates(TrainConfig(), SweepConfig(candidates=[{"name": "x", "set": {"eval.ks": [1]}}]))
    with pytest.raises(ConfigError, match="sweep candidate x: train.optimizer.lr: Input should be greater than 0"):
        load_config(None, ["sweep.candidates=[{name: x, set: {train.optimizer.lr: -1}}]"])
    with pytest.raises(ConfigError, match="train.fsdp is the scheduler's to choose"):
        load_config(None, ["sweep.candidates=[{name: x, set: {train.fsdp: FULL_SHARD}}]"])


def test_trials_are_keyed_by_what_decides_throughput() -> None:
    base, choice = TrainConfig(), Choice(1, "ddp", False)
    key = trial_key(base, 128, choice, "cpu:x", None)
    assert (
        trial_key(
            base.model_copy(update={"optimizer": base.optimizer.model_copy(update={"lr": 1e-5})}), 128, choice, "cpu:x", None
        )
        == key
    )  # the learning rate does not change the speed: candidates share trials
    wider = base.model_copy(update={"model": base.model.model_copy(update={"d_model": 512})})
    assert (
        len(
            {
                key,
                trial_key(wider, 128, choice, "cpu:x", None),
                trial_key(base, 256, choice, "cpu:x", None),
                trial_key(base, 128, Choice(2, "ddp", False), "cpu:x", None),
                trial_key(base, 128, choice, "gpu:H100", None),
                trial_key(base, 128, choice, "cpu:x", 512),
            }
        )
        == 6
    )
    picked = choices(SweepConfig(parallelism=["ddp", "fsdp_full_shard"], activation_checkpointing=[False, True]), 4, 8)
    assert {(c.devices, c.parallelism) for c in picked} == {
        (1, "ddp"),
        (2, "ddp"),
        (4, "ddp"),
        (2, "fsdp_full_shard"),
        (4, "fsdp_full_shard"),
    }  # FSDP only on 2 or more
    assert len(picked) == 10 and {c.devices for c in choices(SweepConfig(), 4, 6)} == {1, 2}  # counts must divide the batch


def test_the_profiler_reuses_cached_trials(tmp_path: Path) -> None:
    cache = TrialCache(tmp_path / "trials.json")
    train = TrainConfig()
    from lathe.training.job import TrainJob

    job = TrainJob(
        train=train,
        seq_len=128,
        streams=[],
        validation={},
        tokenizer="/nonexistent",
        out_dir=str(tmp_path),
        run_name="x",
        mlflow_uri="",
    )
    from lathe.training.sweep.profiler import hardware

    sweep = SweepConfig(device_counts=[1, 2])
    for choice in choices(sweep, 2, train.global_train_batch_size):
        cache.put(trial_key(train, 128, choice, hardware(), None), Trial("ok", 10.0 * choice.devices, 5.0, 8))
    reread = TrialCache(tmp_path / "trials.json")  # from the file, as the next retrain reads it
    found = profile({"a": job}, sweep, 2, False, reread, tmp_path / "trials", QUIET)
    assert {c.devices: t.batches_per_s for c, t in found["a"].items()} == {1: 10.0, 2: 20.0}
    assert not (tmp_path / "trials").exists()  # nothing ran: a trial would have launched Composer there
    assert found["a"][Choice(1, "ddp", False)].predict(100, 30) == pytest.approx(5.0 - 0.8 + 10 + 1)


# --- a sweep end to end -----------------------------------------------------------------------------

SWEEP = [
    "train.init_from=null",
    "train.model={d_model: 64, n_layers: 2, n_heads: 2, max_seq_len: 128}",
    "train.warmup=2ba",
    "train.max_duration=12ba",
    "train.global_train_batch_size=4",
    "train.device_train_microbatch_size=4",
    "train.eval_interval=12ba",
    "train.eval_subset_num_batches=2",
    "train.save_interval=6ba",
    "train.wandb.enabled=false",
    "sweep.grid={train.optimizer.lr: [0.0003, 0.01]}",
    # Too big for each rank's 300 MB: its trial runs out of memory and it is recorded as infeasible.
    "sweep.candidates=[{name: big, set: {train.model.d_model: 1024, train.model.n_layers: 8, train.model.n_heads: 8}}]",
    "sweep.device_counts=[1]",
    "sweep.device_memory_mb=300",
    "sweep.profile_batches=6",
    "eval.ks=[1]",
    "eval.generation={limit: 2, n: 1, max_new_tokens: 8, temperature: 0.0}",
    "eval.infilling={tasks: 8, max_new_tokens: 8}",
    "eval.line_completion={tasks: 8, max_new_tokens: 8}",
]


@pytest.fixture(scope="module")
def swept(shards_pipeline, tmp_path_factory):
    """`lathe sweep`'s stages (train with the sweep on, then eval's gate) on a copy of the session's shards."""
    profile_dir, _, _ = shards_pipeline
    runs = tmp_path_factory.mktemp("sweep") / "runs"
    for stage in ("data", "tokenizer", "shards"):  # their manifests point at the session's outputs
        shutil.copytree(profile_dir / stage, runs / "small" / stage)
    overrides = [f"run.runs_dir={runs}", *SMALL_PIPELINE, *SWEEP, "sweep.enabled=true"]
    outcomes = run_pipeline(load_config(None, overrides), ["train", "eval"], console=QUIET)
    return runs / "small", overrides, outcomes


def test_a_sweep_trains_candidates_side_by_side_and_registers_the_best(swept) -> None:
    profile_dir, _, outcomes = swept
    assert [o.status for o in outcomes][-2:] == ["ran", "ran"]
    summary = json.loads((profile_dir / "train" / "train_summary.json").read_text())
    by_name = {c["name"]: c for c in summary["sweep"]["candidates"]}
    assert {n: c["status"] for n, c in by_name.items()} == {"big": "infeasible", "lr=0.0003": "trained", "lr=0.01": "trained"}
    assert "out of memory" in by_name["big"]["reason"]
    losses = {n: c["figures"]["val_loss"] for n, c in by_name.items() if c["figures"]}
    assert summary["sweep"]["winner"] == min(losses, key=losses.get) == "lr=0.01"  # the higher rate learns more in 12 batches
    assert all("pass@1" in by_name[n]["figures"] for n in losses)  # HumanEval ran on each candidate
    # Both trained at once, one core each (the plan: one-core trials only, two cores).
    a, b = by_name["lr=0.0003"], by_name["lr=0.01"]
    assert sorted(a["devices"] + b["devices"]) == [0, 1]
    plan = json.loads((profile_dir / "train" / "plan.json").read_text())
    assert plan["status"] == "OPTIMAL" and [c["start_s"] for c in plan["candidates"]] == [0.0, 0.0]
    assert plan["sequential_makespan_s"] > plan["makespan_s"]
    measured = json.loads((profile_dir / "train" / "measured.json").read_text())
    assert len(measured["candidates"]) == 2 and measured["makespan_s"] > 0
    assert (profile_dir / "train" / "gantt.png").stat().st_size > 10_000
    # The winner is the registered version, with its lineage, and the eval stage gated exactly it.
    client = mlflow.MlflowClient(f"sqlite:///{profile_dir.parent / 'mlflow.db'}")
    version = client.get_model_version("lathe-code", summary["model_version"])
    assert version.tags["lathe.sweep_candidate"] == "lr=0.01" and version.tags["lathe.method"] == "pretrain"
    gate = json.loads((profile_dir / "eval" / "results.json").read_text())["gate"]
    assert gate["candidate_version"] == summary["model_version"] and gate["passed"]
    # Every trained candidate is an MLflow child run with its config and figures, side by side.
    runs = client.search_runs([client.get_experiment_by_name("lathe").experiment_id], "tags.`lathe.sweep_candidate` != ''")
    assert {r.data.tags["lathe.sweep_candidate"] for r in runs} == {"lr=0.0003", "lr=0.01"}
    for run in runs:
        assert {"val_loss", "pass_at_1", "sweep_seconds"} <= set(run.data.metrics)
        assert run.data.params["train.optimizer.lr"] in ("0.0003", "0.01") and run.data.params["sweep.option"] == "1x ddp"
        assert run.data.tags["mlflow.parentRunId"] == outcomes[-2].manifest["mlflow"]["run_id"]


def test_a_rerun_skips_finished_candidates_and_reuses_trials(swept) -> None:
    profile_dir, overrides, _ = swept
    trials = (profile_dir / "sweep" / "trials.json").read_text()
    assert {t["status"] for t in json.loads(trials).values()} == {"ok", "oom"}
    # A third rate: only it trains; the two finished candidates and every trial are reused.
    wider = [o for o in overrides if not o.startswith("sweep.grid")] + ["sweep.grid={train.optimizer.lr: [0.0003, 0.01, 0.003]}"]
    outcomes = run_pipeline(load_config(None, wider + ["sweep.evaluate=false"]), ["train"], console=QUIET)
    assert outcomes[-1].status == "ran"
    summary = json.loads((profile_dir / "train" / "train_summary.json").read_text())
    status = {c["name"]: c["status"] for c in summary["sweep"]["candidates"]}
    assert status == {"big": "infeasible", "lr=0.0003": "reused", "lr=0.01": "reused", "lr=0.003": "trained"}
    assert (profile_dir / "sweep" / "trials.json").read_text() == trials  # no trial ran again


def test_the_executor_runs_as_planned_re_plans_when_off_and_survives_a_failure(tmp_path: Path, monkeypatch) -> None:
    """The executor's bookkeeping with stand-in jobs that sleep (the end-to-end test runs real Composer jobs):
    a job far off its prediction re-plans the rest, a failing one is recorded, and no device runs two at once."""
    import time

    from lathe.training.job import TrainJob
    from lathe.training.sweep import executor as sweep_module
    from lathe.training.sweep.executor import Candidate, execute

    actual = {"quick": 0.3, "slow": 1.5, "boom": 0.1, "after": 0.4, "wide": 0.3}  # quick is 5x faster than predicted

    def stand_in(c: Candidate, a: Assignment, gpu: bool, memory_mb: int | None) -> None:
        time.sleep(actual[c.name])
        if c.name == "boom":
            raise LatheError("training failed (exit 1); rank logs in ...")

    monkeypatch.setattr(sweep_module, "train_one", stand_in)
    job = TrainJob(
        train=TrainConfig(),
        seq_len=128,
        streams=[],
        validation={},
        tokenizer="t",
        out_dir=str(tmp_path),
        run_name="x",
        mlflow_uri="",
    )
    jobs = [
        Job("quick", (ddp(1, 1.5),)),
        Job("slow", (ddp(1, 1.5),)),
        Job("boom", (ddp(1, 0.1),)),
        Job("after", (ddp(1, 0.4),)),
        Job("wide", (ddp(2, 0.3),)),
    ]
    candidates = {j.name: Candidate(j.name, "fp", tmp_path / j.name, job) for j in jobs}
    plan = solve(jobs, 2, workers=2)
    ran = execute(plan, jobs, candidates, 2, False, 0.2, 5.0, None, tmp_path, QUIET)
    assert {n: c.status for n, c in candidates.items()} == {
        "quick": "trained",
        "slow": "trained",
        "boom": "failed",
        "after": "trained",
        "wide": "trained",
    }
    assert "training failed" in candidates["boom"].reason
    assert check_plan(ran) == [] and len(ran.assignments) == 5  # as run: no device double-booked
    measured = json.loads((tmp_path / "measured.json").read_text())
    assert measured["replans"] >= 1 and (tmp_path / "replan-1.json").is_file()
    wide = ran.by_name()["wide"]
    assert wide.start >= max(a.end for a in ran.assignments if a.name != "wide" and a.start < wide.start) - 1e-6
