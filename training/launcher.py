"""The launcher of a training job: N local ranks of one node (of a multi-node job), started and watched here.

lathe starts its ranks itself, with the environment torch.distributed and Composer's `dist` read (RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR, MASTER_PORT), as Composer's `composer -n N`
launcher does: that launcher is a Python that imports Composer before it starts a rank (~8-14 s of a core
here, on every node of every multi-rank job), only to set those variables and wait.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lathe.core.errors import LatheError
from lathe.core.process import dying_with_this_thread
from lathe.training.job import FinetuneJob, TrainJob

STOP_GRACE_S = 30.0  # how long the other ranks get to exit after one failed, before they are killed


@dataclass(frozen=True)
class Devices:
    """The devices of this node a job may use: GPU indices (CUDA_VISIBLE_DEVICES) or CPU cores (affinity)."""

    ids: tuple[int, ...]
    gpu: bool


@dataclass(frozen=True)
class Topology:
    """Where this node's ranks sit in the job: ``nproc`` local ranks from global rank ``base_rank``."""

    nproc: int
    world_size: int
    node_rank: int
    master_addr: str
    master_port: int

    @property
    def base_rank(self) -> int:
        """The global rank of this node's local rank 0 (every node runs ``nproc`` ranks)."""
        return self.node_rank * self.nproc

    def rank_env(self, local_rank: int) -> dict[str, str]:
        """The distributed variables of one local rank."""
        return {
            "RANK": str(self.base_rank + local_rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(self.nproc),
            "NODE_RANK": str(self.node_rank),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "PYTHONUNBUFFERED": "1",
            "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",  # a failed collective raises instead of hanging the rank
        }


def topology(nproc: int, env: dict[str, str]) -> Topology:
    """This node's place in the job from the environment a Kubernetes Indexed Job (or an operator) sets:
    WORLD_SIZE (all ranks), NODE_RANK, MASTER_ADDR, MASTER_PORT; a single-node job on a free local port without."""
    world_size = int(env.get("WORLD_SIZE") or nproc)
    if world_size == nproc:
        port = int(env.get("MASTER_PORT") or 0) or _free_port()
        return Topology(nproc, nproc, 0, env.get("MASTER_ADDR") or "127.0.0.1", port)
    if world_size % nproc:
        raise LatheError(f"WORLD_SIZE={world_size} is not a multiple of train.nproc={nproc}; every node runs nproc ranks")
    missing = [var for var in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(var)]
    if missing:
        raise LatheError(f"a node of a {world_size}-rank job needs {', '.join(missing)} in its environment; set them")
    node_rank = int(env["NODE_RANK"])
    if not 0 <= node_rank < world_size // nproc:
        raise LatheError(f"NODE_RANK={node_rank} is outside a job of {world_size // nproc} nodes; fix NODE_RANK")
    return Topology(nproc, world_size, node_rank, env["MASTER_ADDR"], int(env["MASTER_PORT"]))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(job: TrainJob | FinetuneJob, nproc: int, out: Path, devices: Devices | None = None) -> None:
    """Run the job on ``nproc`` local ranks (DDP or FSDP: gloo on CPU, NCCL on GPU) and wait for them.

    Multi-node: NODE_RANK, WORLD_SIZE (total ranks), MASTER_ADDR and MASTER_PORT in the environment
    place this node's ranks, as a Kubernetes Indexed Job sets them. ``devices``: a job that shares
    this node with others (a sweep's candidate) runs on these GPUs or CPU cores only, as a single-node
    job on a port of its own. Each rank writes to ``out/logs/rank{N}.stdout.txt`` and ``.stderr.txt``.
    When a rank fails, the others are stopped (a DDP peer would otherwise wait for it until its timeout).
    """
    job_file = out / "job.json"
    job_file.write_text(job.model_dump_json(indent=2))
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    env = dict(os.environ)
    if devices is not None:
        for var in ("WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(var, None)  # a job of its own, on a free port
    topo = topology(nproc, env)
    cmd = [sys.executable, "-m", "lathe.training.worker", str(job_file)]
    cores = os.cpu_count() or 1
    if devices is not None and devices.gpu:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices.ids))
    elif devices is not None:
        cmd = [shutil.which("taskset") or "taskset", "-c", ",".join(map(str, devices.ids)), *cmd]
        cores = len(devices.ids)
        env["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
    # ranks x threads <= cores, or the ranks fight over them
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    code = _run_ranks(cmd, topo, env, logs)
    if code != 0:
        raise LatheError(f"training failed (exit {code}); rank logs in {logs}")


def _run_ranks(cmd: list[str], topo: Topology, env: dict[str, str], logs: Path) -> int:
    """Start this node's ranks, wait for all of them, and return the job's exit status: the first failed rank's.

    A rank alone in its job (world size 1) gets no distributed variables: it trains without a process group.
    Each rank dies with the thread that started it (``PR_SET_PDEATHSIG``): a `lathe` killed with -9 leaves no
    rank training into a folder the next run reuses.
    """
    ranks: list[subprocess.Popen] = []
    files: list[IO[str]] = []
    try:
        for local in range(topo.nproc):
            rank = topo.base_rank + local
            stdout, stderr = open(logs / f"rank{rank}.stdout.txt", "w"), open(logs / f"rank{rank}.stderr.txt", "w")
            files += [stdout, stderr]
            rank_env = env if topo.world_size == 1 else {**env, **topo.rank_env(local)}
            ranks.append(
                subprocess.Popen(dying_with_this_thread(cmd, signal.SIGTERM), env=rank_env, stdout=stdout, stderr=stderr)
            )
        failed = _wait_for_ranks(ranks)
        return 0 if failed is None else failed
    finally:
        _stop(ranks)
        for handle in files:
            handle.close()


def _wait_for_ranks(ranks: list[subprocess.Popen]) -> int | None:
    """Wait until every rank exited 0 (None) or one failed (its exit status; the others are left running)."""
    while True:
        codes = [rank.poll() for rank in ranks]
        failed = [code for code in codes if code not in (None, 0)]
        if failed:
            return failed[0]
        if all(code == 0 for code in codes):
            return None
        time.sleep(0.2)


def _stop(ranks: list[subprocess.Popen]) -> None:
    """SIGTERM the ranks still running, give them ``STOP_GRACE_S`` to exit, then SIGKILL what is left."""
    running = [rank for rank in ranks if rank.poll() is None]
    for rank in running:
        rank.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for rank in running:
        try:
            rank.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            rank.kill()
            rank.wait()
