"""The sweep's profiler: each candidate trialled for a few batches on each device count and
parallelism choice, its throughput read from Composer's speed monitor; a trial that runs out of
memory marks its choice infeasible. Trials are cached by what decides throughput (the model's
shape, batch, precision, sequence length, the choice, the hardware), not by the learning rate or
schedule, so candidates differing only in those share trials, and a retrain reuses them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from lathe.core.errors import LatheError
from lathe.training.config import TrainConfig
from lathe.training.job import METRICS, TrainJob, last_metric
from lathe.training.launcher import Devices, launch
from lathe.training.sweep.config import SweepConfig
from lathe.training.sweep.schedule import Option

# What a rank's log says when its device (or its memory budget) ran out: CUDA's allocator, PyTorch's
# CPU allocator, Python's own.
_OOM = re.compile(r"out of memory|can't allocate memory|MemoryError|Cannot allocate memory", re.IGNORECASE)


@dataclass(frozen=True)
class Choice:
    """A way to run a job: how many devices and which parallelism."""

    devices: int
    parallelism: str
    activation_checkpointing: bool

    def apply(self, train: TrainConfig) -> TrainConfig:
        """``train`` set up to run this way (processes, FSDP, activation checkpointing)."""
        fsdp = {"ddp": None, "fsdp_full_shard": "FULL_SHARD", "fsdp_shard_grad_op": "SHARD_GRAD_OP"}[self.parallelism]
        return train.model_copy(
            update={"nproc": self.devices, "fsdp": fsdp, "activation_checkpointing": self.activation_checkpointing}
        )


@dataclass
class Trial:
    """One trial's outcome: throughput and fixed cost, or why the choice cannot run."""

    status: str  # ok | oom | failed
    batches_per_s: float = 0.0
    wall_s: float = 0.0  # the whole trial: processes, imports, data, model and its batches
    batches: int = 0
    reason: str = ""

    def predict(self, batches: int, eval_batches: int) -> float:
        """Seconds a job of ``batches`` training batches and ``eval_batches`` validation batches takes:
        the trial's fixed cost (its wall time beyond its batches at full speed) plus the batches at the
        measured rate, validation at three times it (a forward pass is about a third of a step)."""
        fixed = max(0.0, self.wall_s - self.batches / self.batches_per_s)
        return fixed + batches / self.batches_per_s + eval_batches / (3 * self.batches_per_s)


def hardware() -> str:
    """What the devices are: the GPU's name, or the CPU's model (trials do not carry over between them)."""
    import torch

    if torch.cuda.is_available():
        return f"gpu:{torch.cuda.get_device_name(0)}"
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"cpu:{model}"


def trial_key(train: TrainConfig, seq_len: int, choice: Choice, device: str, memory_mb: int | None) -> str:
    """The cache key of a trial: everything that decides its throughput and memory, nothing else."""
    payload = {
        "model": train.model.model_dump(mode="json"),
        "seq_len": seq_len,
        "choice": asdict(choice),
        "batch": train.global_train_batch_size,
        "microbatch": train.device_train_microbatch_size,
        "precision": train.precision,
        "offload": train.activation_cpu_offload,
        "workers": train.num_workers,
        "hardware": device,
        "memory_mb": memory_mb,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def choices(sweep: SweepConfig, devices: int, global_batch: int) -> list[Choice]:
    """Every choice to trial: FSDP only on 2 or more devices, device counts that divide the batch."""
    return [
        Choice(d, p, ac)
        for d in sweep.counts(devices)
        for p in sweep.parallelism
        for ac in sweep.activation_checkpointing
        if global_batch % d == 0 and (p == "ddp" or d > 1)
    ]


class TrialCache:
    """Trials by key in one JSON file, kept across retrains (under the profile's sweep folder)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.trials: dict[str, Trial] = {}
        if path.is_file():
            self.trials = {k: Trial(**v) for k, v in json.loads(path.read_text()).items()}

    def get(self, key: str) -> Trial | None:
        """The cached trial, if any."""
        return self.trials.get(key)

    def put(self, key: str, trial: Trial) -> None:
        """Record a trial and write the file (atomically: a killed sweep keeps the trials it finished)."""
        self.trials[key] = trial
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: asdict(v) for k, v in self.trials.items()}, indent=2, sort_keys=True))
        os.replace(tmp, self.path)


def run_trial(job: TrainJob, choice: Choice, batches: int, out: Path, devices: Devices) -> Trial:
    """Train ``job`` (already set up as ``choice``) for ``batches`` batches on ``devices`` and read the
    speed monitor's throughput; out of memory -> an ``oom`` trial, any other failure a ``failed`` one."""
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS).unlink(missing_ok=True)
    trial_job = job.model_copy(
        update={
            "trial": True,
            "out_dir": str(out.resolve()),
            "mlflow_run_id": None,
            "init_weights": None,
            "train": job.train.model_copy(
                update={"max_duration": f"{batches}ba", "wandb": job.train.wandb.model_copy(update={"enabled": False})}
            ),
        }
    )
    began = time.perf_counter()
    try:
        launch(trial_job, choice.devices, out, devices)
    except LatheError as exc:
        logs = "\n".join(p.read_text(errors="replace") for p in sorted((out / "logs").glob("rank*.std*.txt")))
        if _OOM.search(logs):
            return Trial("oom", reason="out of memory")
        tail = [line for line in logs.splitlines() if line.strip()][-1:] or [str(exc)]
        return Trial("failed", reason=tail[0][:300])
    wall = time.perf_counter() - began
    samples_per_s = last_metric(out / METRICS, "throughput/samples_per_sec")
    if not samples_per_s:
        return Trial("failed", wall_s=wall, reason=f"the speed monitor logged no throughput in {batches} batches")
    return Trial("ok", samples_per_s / job.train.global_train_batch_size, wall, batches)


def profile(
    jobs: dict[str, TrainJob], sweep: SweepConfig, devices: int, gpu: bool, cache: TrialCache, work: Path, console: Console
) -> dict[str, dict[Choice, Trial]]:
    """Each candidate's trial on each choice (cached ones reused), run one at a time on devices 0..d-1."""
    device = hardware()
    found: dict[str, dict[Choice, Trial]] = {}
    for name, job in jobs.items():
        found[name] = {}
        for choice in choices(sweep, devices, job.train.global_train_batch_size):
            key = trial_key(job.train, job.seq_len, choice, device, sweep.device_memory_mb)
            trial = cache.get(key)
            if trial is None:
                set_up = job.model_copy(update={"train": choice.apply(job.train), "device_memory_mb": sweep.device_memory_mb})
                trial = run_trial(set_up, choice, sweep.profile_batches, work / key, Devices(tuple(range(choice.devices)), gpu))
                if trial.status != "failed":  # a failure may be passing (a full disk): try again next time
                    cache.put(key, trial)
                console.print(
                    f"trial {name} on {choice.devices} x {choice.parallelism}"
                    f"{' +ac' if choice.activation_checkpointing else ''}: " + describe(trial)
                )
            found[name][choice] = trial
    return found


def describe(trial: Trial) -> str:
    """One line: the throughput, or why the choice is out."""
    if trial.status == "ok":
        return f"{trial.batches_per_s:.2f} batches/s ({trial.wall_s:.1f} s for {trial.batches} batches)"
    return f"{trial.status}: {trial.reason}"


def options(trials: dict[Choice, Trial], predict: Callable[[Trial], float]) -> tuple[Option, ...]:
    """The schedulable options of one candidate: its feasible choices with their predicted durations."""
    return tuple(
        Option(c.devices, c.parallelism, c.activation_checkpointing, round(predict(t), 1))
        for c, t in trials.items()
        if t.status == "ok" and math.isfinite(predict(t))
    )
