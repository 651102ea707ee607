"""A sweep's joint schedule against the two common practices: every candidate in turn on all devices,
and the devices split evenly between the candidates.

Run by `make bench` (never by tests: timings on shared 2-core machines are noisy):

    .venv/bin/python benchmarks/sweep_bench.py [--batches 160] [--d-model 128] [--work runs/bench/sweep]
        [--gpus 64] [--solver-s 30] [--skip-measured] [--skip-simulated]

1. Measured here, on this machine's CPU cores: a small profile (1.5 MB of the stdlib, a 512-token
   vocabulary, 128-token samples) is built once under --work; four candidates (lr 0.001 / 0.01 x 2 / 4
   layers of --d-model) are trained by the sweep (`lathe run train --force` with sweep.enabled), then
   each one in turn on all cores (train.nproc = core count), then split evenly: one concurrent lane per
   core, pinned with `taskset`, train.nproc 1, in its own copy of the profile (so that the profile locks
   do not serialise the lanes), lane k taking candidates k, k + cores, ... in turn, as the sweep's
   even_split_makespan counts them. Baseline times are the train stages' `duration_s`
   (their manifests: the CLI's start-up excluded); the sweep's are its measured.json (the candidates' jobs,
   first start to last end) and its stage's `duration_s` (with the profiling trials). The profile is
   configs/tiny.yaml's (the CLI's default) with these overrides, its own sweep candidates cleared. Not
   quite like for like: a train stage with train.nproc 1 trains in the CLI's own process, while each
   sweep job starts a worker process (a few seconds of imports), which favours the even split.
2. Simulated at scale, no training: 16 candidates (variations of configs/gpu-125m, gpu-350m and gpu-1b,
   at their configs' token budgets) on --gpus H100-class GPUs, scheduled by training/schedule.py. The
   durations are arithmetic, every assumption a constant below and in the JSON:
   - compute: 6 x parameters x tokens FLOPs at MFU 40% of 989 TFLOP/s (H100 SXM, bf16 dense) per GPU;
   - communication per step, not overlapped with compute for half of it: DDP all-reduces bf16 gradients
     (2 (d-1)/d x 2 bytes/param), FSDP FULL_SHARD all-gathers twice and reduce-scatters once
     (3 (d-1)/d x 2 bytes/param), at 300 GB/s bus bandwidth within an 8-GPU node (NVLink) and 40 GB/s
     per GPU across nodes (a 400 Gb/s NIC at 80%): so small models scale worse than large ones;
   - memory: 16 bytes/param of state (amp_bf16: fp32 weights and gradients, Adam's two fp32 moments), sharded over d
     under FSDP, plus activations of one 2048-token sample (34 bytes x seq x layers x d_model,
     Korthikanti et al. 2022, flash attention), within 90% of 80 GB; an option over it is left out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit
from lathe.training.sweep.schedule import Job, Option, draw_gantt, even_split_makespan, sequential_makespan, solve

LATHE = Path(sys.executable).parent / "lathe"
DATA = [
    "profile=small",
    "data.sources=[{kind: embedded, max_bytes: 1500000, include_site_packages: false}]",
    "data.partitions=2",
    "tokenizer.vocab_size=512",
    "tokenizer.reserved_sentinels=4",
    "tokenizer.heldout_fraction=0.1",
    "tokenizer.ablation_vocab_sizes=[320, 384]",
    "shards.seq_len=128",
    "shards.partitions=2",
    "shards.val_fraction=0.1",
]
GRID = {"train.optimizer.lr": [0.001, 0.01], "train.model.n_layers": [2, 4]}

PEAK_FLOPS, MFU = 989e12, 0.40
NODE_GPUS, NVLINK_BPS, NIC_BPS, HIDDEN = 8, 300e9, 40e9, 0.5
GPU_BYTES, USABLE, STATE_BYTES, ACT_BYTES = 80e9, 0.9, 16, 34
# (config, n_layers, learning rates): 6 + 6 + 4 = 16 candidates
VARIATIONS = [
    ("gpu-125m", (8, 12, 16), (3e-4, 6e-4)),
    ("gpu-350m", (16, 24), (1.5e-4, 3e-4, 6e-4)),
    ("gpu-1b", (16, 20), (1e-4, 2e-4)),
]
SATURN = "Saturn (Nagrecha & Kumar, VLDB 2024): 39-49% lower model-selection time than current practice"


def lathe(stage: str, runs: Path, sets: list[str], log: Path, cores: str | None = None) -> None:
    """`lathe run <stage>` (train: --force) under ``runs``, pinned to ``cores`` if given; output to ``log``."""
    cmd = [str(LATHE), "run", stage, *(["--force"] if stage == "train" else [])]
    cmd += [arg for s in [f"run.runs_dir={runs}", *sets] for arg in ("--set", s)]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # each runs folder keeps its own
    if cores is not None:
        cmd, env["OMP_NUM_THREADS"] = ["taskset", "-c", cores, *cmd], "1"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False).returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed; its output is in {log}:\n" + "\n".join(log.read_text().splitlines()[-20:]))


def stage_seconds(runs: Path) -> float:
    """The train stage's own wall time, from its manifest."""
    return json.loads((runs / "small" / "train" / "manifest.json").read_text())["duration_s"]


def measured(work: Path, batches: int, d_model: int) -> dict[str, Any]:
    """The sweep, then the same candidates one after another on all cores, then split evenly, a lane per core."""
    shutil.rmtree(work, ignore_errors=True)
    work = work.resolve()
    runs, cores = work / "runs", len(os.sched_getaffinity(0))
    base = DATA + [
        "train.init_from=null",
        f"train.model={{d_model: {d_model}, n_layers: 2, n_heads: 2, max_seq_len: 128}}",
        f"train.max_duration={batches}ba",
        f"train.eval_interval={batches}ba",
        "train.eval_subset_num_batches=2",
        f"train.save_interval={batches}ba",
        "train.wandb.enabled=false",
        "train.warmup=2ba",
    ]
    began = time.perf_counter()
    lathe("shards", runs, base, work / "logs" / "shards.log")
    data_s = time.perf_counter() - began
    grid = "{" + ", ".join(f"{k}: {v}" for k, v in GRID.items()) + "}"
    sweep = ["sweep.enabled=true", "sweep.candidates=[]", f"sweep.grid={grid}", "sweep.evaluate=false"]  # the grid only
    lathe("train", runs, base + sweep, work / "logs" / "sweep.log")
    plan = json.loads((runs / "small" / "train" / "plan.json").read_text())
    ran = json.loads((runs / "small" / "train" / "measured.json").read_text())
    sweep_stage_s = stage_seconds(runs)
    candidates = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]  # the sweep's order
    name = ["+".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in c.items()) for c in candidates]
    sets = [[f"{k}={v}" for k, v in c.items()] for c in candidates]

    sequential = {}
    for i in range(len(candidates)):
        lathe("train", runs, base + sets[i] + [f"train.nproc={cores}"], work / "logs" / f"sequential-{i}.log")
        sequential[name[i]] = stage_seconds(runs)

    def lane(k: int) -> dict[str, float]:
        """Core k's share of the even split: candidates k, k + cores, ... in turn, in a copy of the profile."""
        lane_runs = work / f"lane{k}"
        shutil.copytree(
            runs / "small",
            lane_runs / "small",  # the finished data stages, not the train stage's runs
            ignore=lambda folder, names: {"train", "sweep", ".lock"} & set(names) if folder == str(runs / "small") else set(),
        )
        took = {}
        for i in range(k, len(candidates), cores):
            lathe("train", lane_runs, base + sets[i] + ["train.nproc=1"], work / "logs" / f"even-{i}.log", cores=str(k))
            took[name[i]] = stage_seconds(lane_runs)
        return took

    with ThreadPoolExecutor(cores) as pool:
        lanes = list(pool.map(lane, range(cores)))
    sequential_s, even_s, solved_s = sum(sequential.values()), max(sum(t.values()) for t in lanes), ran["makespan_s"]
    return {
        "measured_cores": cores,
        "measured_candidates": [
            f"{c['name']}: {c['option']} on {c['devices']} from {c['start_s']:.0f} s for {c['duration_s']:.0f} s (measured)"
            for c in ran["candidates"]
        ],
        "measured_data_build_s": round(data_s, 1),
        "measured_plan_status": f"{plan['status']}, gap {plan['gap']:.3f}, solved in {plan['solve_s']:.2f} s",
        "measured_predicted_makespan_s": round(plan["makespan_s"], 1),
        "measured_makespan_s": round(solved_s, 1),
        "measured_replans": ran["replans"],
        "measured_sweep_stage_s": round(sweep_stage_s, 1),
        "measured_predicted_sequential_s": round(plan["sequential_makespan_s"], 1),
        "measured_predicted_even_split_s": round(plan["even_split_makespan_s"], 1),
        "measured_sequential_stages_s": {k: round(v, 1) for k, v in sequential.items()},
        "measured_even_split_stages_s": [{k: round(v, 1) for k, v in t.items()} for t in lanes],
        "measured_sequential_s": round(sequential_s, 1),
        "measured_even_split_s": round(even_s, 1),
        "measured_ratio_solved_over_sequential": round(solved_s / sequential_s, 3),
        "measured_ratio_solved_over_even_split": round(solved_s / even_s, 3),
        "measured_ratio_sweep_stage_over_sequential": round(sweep_stage_s / sequential_s, 3),
        "measured_ratio_sweep_stage_over_even_split": round(sweep_stage_s / even_s, 3),
    }


def parameters(model: dict[str, Any], vocab: int) -> int:
    """A transformer's parameters: attention (grouped-query K and V), SwiGLU, embeddings (norms left out)."""
    d, kv_share = model["d_model"], model.get("n_kv_heads", model["n_heads"]) / model["n_heads"]
    block = 2 * d * d + 2 * d * int(d * kv_share) + 3 * d * model["ffn_hidden"]
    return model["n_layers"] * block + vocab * d * (1 if model.get("tie_embeddings") else 2)


def option(
    params: int, tokens: float, step_tokens: int, layers: int, width: int, seq: int, devices: int, parallelism: str
) -> Option | None:
    """One candidate's job on ``devices`` GPUs with ``parallelism`` by the module's arithmetic; None if over memory."""
    sharded = devices if parallelism == "fsdp_full_shard" else 1
    if STATE_BYTES * params / sharded + ACT_BYTES * seq * layers * width > USABLE * GPU_BYTES:
        return None
    compute = 6 * params * step_tokens / (PEAK_FLOPS * MFU * devices)
    volume = (3 if sharded > 1 else 2) * (devices - 1) / devices * 2 * params
    exposed = (1 - HIDDEN) * volume / (NVLINK_BPS if devices <= NODE_GPUS else NIC_BPS)
    return Option(devices, parallelism, False, round(tokens / step_tokens * (compute + exposed), 1))


def simulated(gpus: int, solver_s: float, gantt: Path) -> dict[str, Any]:
    """16 candidates on ``gpus`` GPUs: the solved plan against the two common practices."""
    jobs, infeasible = [], 0
    for config, layer_counts, lrs in VARIATIONS:
        cfg = yaml.safe_load(Path(f"configs/{config}.yaml").read_text())
        train, seq = cfg["train"], cfg["shards"]["seq_len"]
        step_tokens = train["global_train_batch_size"] * seq
        tokens = int(train["max_duration"].removesuffix("ba")) * step_tokens
        for layers, lr in itertools.product(layer_counts, lrs):
            params = parameters(train["model"] | {"n_layers": layers}, cfg["tokenizer"]["vocab_size"])
            counts = [
                d for d in (2**i for i in range(gpus.bit_length())) if d <= gpus and train["global_train_batch_size"] % d == 0
            ]
            tried = [
                option(params, tokens, step_tokens, layers, train["model"]["d_model"], seq, d, p)
                for d in counts
                for p in ("ddp", "fsdp_full_shard")
                if p == "ddp" or d > 1
            ]
            infeasible += tried.count(None)
            jobs.append(Job(f"{config.removeprefix('gpu-')}-L{layers}-lr{lr:g}", tuple(o for o in tried if o)))
    plan = solve(jobs, gpus, time_limit_s=solver_s)
    draw_gantt(plan, gantt, title=f"simulated sweep, {len(jobs)} candidates on {gpus} GPUs")
    sequential, even = sequential_makespan(jobs, gpus), even_split_makespan(jobs, gpus)
    makespans = {"solved": plan.makespan, "sequential": sequential, "even_split": even}
    return {
        "simulated_assumptions": {
            "peak_flops": PEAK_FLOPS,
            "mfu": MFU,
            "flops": "6 x params x tokens",
            "gpus_per_node": NODE_GPUS,
            "nvlink_bus_bytes_per_s": NVLINK_BPS,
            "nic_bytes_per_s": NIC_BPS,
            "communication_hidden_share": HIDDEN,
            "gpu_bytes": GPU_BYTES,
            "usable_share": USABLE,
            "state_bytes_per_param": STATE_BYTES,
            "activation_bytes_per_token_layer_width": ACT_BYTES,
        },
        "simulated_candidates": len(jobs),
        "simulated_gpus": gpus,
        "simulated_options": sum(len(j.options) for j in jobs),
        "simulated_options_over_memory": infeasible,
        "simulated_solver": f"{plan.status}, gap {plan.gap:.4f}, solved in {plan.solve_s:.1f} s (limit {solver_s:g} s)",
        "simulated_plan": [
            f"{a.name}: {a.option.label} from {a.start / 3600:.2f} h for {(a.end - a.start) / 3600:.2f} h"
            for a in plan.assignments
        ],
        **{f"simulated_{k}_makespan_h": round(v / 3600, 2) for k, v in makespans.items()},
        "simulated_lower_bound_h": round(plan.lower_bound / 3600, 2),
        "simulated_ratio_solved_over_sequential": round(plan.makespan / sequential, 3),
        "simulated_ratio_solved_over_even_split": round(plan.makespan / even, 3) if math.isfinite(even) else None,
        "simulated_gantt": str(gantt),
        "saturn": SATURN,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench/sweep"))
    parser.add_argument("--batches", type=int, default=160, help="training batches per candidate (8 x 128 tokens each)")
    parser.add_argument("--d-model", type=int, default=128, help="the measured candidates' width")
    parser.add_argument("--gpus", type=int, default=64, help="GPUs of the simulated sweep")
    parser.add_argument("--solver-s", type=float, default=30.0, help="CP-SAT's time limit for the simulated sweep")
    parser.add_argument("--skip-measured", action="store_true")
    parser.add_argument("--skip-simulated", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/sweep.json"))
    args = parser.parse_args()
    report: dict[str, Any] = {}
    if not args.skip_simulated:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report |= simulated(args.gpus, args.solver_s, args.out.parent / "sweep_simulated_gantt.png")
    if not args.skip_measured:
        report |= measured(args.work, args.batches, args.d_model)
    emit(report, args.out)


if __name__ == "__main__":
    main()
