"""Composer's launcher for a training job: N local ranks, one node of a multi-node job."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lathe.core.errors import LatheError
from lathe.core.process import dying_with_this_thread
from lathe.training.job import FinetuneJob, TrainJob


@dataclass(frozen=True)
class Devices:
    """The devices of this node a job may use: GPU indices (CUDA_VISIBLE_DEVICES) or CPU cores (affinity)."""

    ids: tuple[int, ...]
    gpu: bool


def launch(job: TrainJob | FinetuneJob, nproc: int, out: Path, devices: Devices | None = None) -> None:
    """Run the job on ``nproc`` local ranks with Composer's launcher (DDP: gloo on CPU, NCCL on GPU).

    Multi-node: NODE_RANK, WORLD_SIZE (total ranks), MASTER_ADDR and MASTER_PORT in the
    environment are passed on, as a Kubernetes Indexed Job sets them. ``devices``: a job that shares
    this node with others (a sweep's candidate) runs on these GPUs or CPU cores only, as a
    single-node job on a port of its own.
    """
    job_file = out / "job.json"
    job_file.write_text(job.model_dump_json(indent=2))
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    env = dict(os.environ)
    if devices is not None:
        for var in ("WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(var, None)  # a job of its own: Composer's launcher picks a free port for each
    worker = ["-m", "lathe.training.worker", str(job_file)]
    stdout, stderr = None, None
    if nproc == 1 and "WORLD_SIZE" not in env:
        # One rank alone needs no launcher (it would cost a second Python importing Composer, ~8 s here):
        # the rank runs directly, its output where the launcher would have put it.
        cmd = [sys.executable, *worker]
        stdout, stderr = open(logs / "rank0.stdout.txt", "w"), open(logs / "rank0.stderr.txt", "w")
    else:
        composer = shutil.which("composer", path=str(Path(sys.executable).parent)) or shutil.which("composer")
        if composer is None:
            raise LatheError("Composer's launcher `composer` is not installed beside this Python; run `make setup`")
        cmd = [
            composer,
            "-n",
            str(nproc),
            "--stdout",
            str(logs / "rank{rank}.stdout.txt"),
            "--stderr",
            str(logs / "rank{rank}.stderr.txt"),
        ]
        for var, flag in [
            ("WORLD_SIZE", "--world_size"),
            ("NODE_RANK", "--node_rank"),
            ("MASTER_ADDR", "--master_addr"),
            ("MASTER_PORT", "--master_port"),
        ]:
            if env.get(var):
                cmd += [flag, env[var]]
        cmd += worker
    cores = os.cpu_count() or 1
    if devices is not None and devices.gpu:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices.ids))
    elif devices is not None:
        cmd = [shutil.which("taskset") or "taskset", "-c", ",".join(map(str, devices.ids)), *cmd]
        cores = len(devices.ids)
        env["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
    # ranks x threads <= cores, or the ranks fight over them
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    # Killed with -9, lathe takes the launcher with it: SIGINT, on which Composer's launcher stops its
    # ranks (on SIGTERM it would die at once and leave them training into a folder the next run reuses).
    try:
        proc = subprocess.run(dying_with_this_thread(cmd, signal.SIGINT), env=env, stdout=stdout, stderr=stderr)
    finally:
        for handle in (stdout, stderr):
            if handle is not None:
                handle.close()
    if proc.returncode != 0:
        raise LatheError(f"training failed (exit {proc.returncode}); rank logs in {logs}")
