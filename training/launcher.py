"""Composer's launcher for a training job: N local ranks, one node of a multi-node job."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from lathe.core.errors import LatheError
from lathe.core.process import dying_with_this_thread
from lathe.training.job import FinetuneJob, TrainJob


def launch(job: TrainJob | FinetuneJob, nproc: int, out: Path) -> None:
    """Run the job on ``nproc`` local ranks with Composer's launcher (DDP: gloo on CPU, NCCL on GPU).

    Multi-node: NODE_RANK, WORLD_SIZE (total ranks), MASTER_ADDR and MASTER_PORT in the
    environment are passed on, as a Kubernetes Indexed Job sets them.
    """
    job_file = out / "job.json"
    job_file.write_text(job.model_dump_json(indent=2))
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    composer = shutil.which("composer", path=str(Path(sys.executable).parent)) or shutil.which("composer")
    if composer is None:
        raise LatheError("Composer's launcher `composer` is not installed beside this Python; run `make setup`")
    cmd = [composer, "-n", str(nproc), "--stdout", str(logs / "rank{rank}.stdout.txt"),
           "--stderr", str(logs / "rank{rank}.stderr.txt")]
    for var, flag in [("WORLD_SIZE", "--world_size"), ("NODE_RANK", "--node_rank"),
                      ("MASTER_ADDR", "--master_addr"), ("MASTER_PORT", "--master_port")]:
        if os.environ.get(var):
            cmd += [flag, os.environ[var]]
    cmd += ["-m", "lathe.training.worker", str(job_file)]
    env = dict(os.environ)
    # ranks x threads <= cores, or the ranks fight over them
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # Killed with -9, lathe takes the launcher with it: SIGINT, on which Composer's launcher stops its
    # ranks (on SIGTERM it would die at once and leave them training into a folder the next run reuses).
    proc = subprocess.run(dying_with_this_thread(cmd, signal.SIGINT), env=env)
    if proc.returncode != 0:
        raise LatheError(f"training failed (exit {proc.returncode}); rank logs in {logs}")
