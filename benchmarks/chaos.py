"""Fault injection: run a small pipeline while killing it at random points, then check what held.

Run by `make chaos` (never by tests: it takes minutes and kills processes on purpose):

    .venv/bin/python benchmarks/chaos.py [--seconds 600] [--seed 0] [--work runs/chaos]

Each round starts one command of the small profile in its own process (a stage with its
upstream, training on one process or two under lathe's launcher, the eval gate, or
`lathe serve`), waits a random time, and SIGKILLs that one process, as the kernel's OOM
killer or a preempted node would: its children get no signal from us. Then it checks:

- no orphan: every process the killed one had started (Spark's JVM, Composer's ranks,
  tritonserver) is gone within a grace period;
- the next command starts (the profile lock of a dead run is stale, not held) and a
  served port is free again.

When the time is up, the whole chain is rerun without faults and must finish, and then:
every stage's manifest is consistent (the data ledger adds up: kept + dropped = processed),
no MLflow run is left RUNNING, the registry holds every version the manifests name, and no
Streaming lock file the runs made is left in the temp folder. The report (JSON) says how many
faults were injected where, and which checks held.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit

ROOT = Path(__file__).resolve().parents[1]
LATHE = str(Path(sys.executable).parent / "lathe")
SMALL = [
    "profile=chaos",
    "data.sources=[{kind: embedded, max_bytes: 1500000, include_site_packages: false}]",
    "data.partitions=2",
    "tokenizer.vocab_size=512",
    "tokenizer.reserved_sentinels=4",
    "tokenizer.heldout_fraction=0.1",
    "tokenizer.ablation_vocab_sizes=[]",
    "shards.seq_len=128",
    "shards.partitions=2",
    "shards.val_fraction=0.1",
    "train.model={d_model: 64, n_layers: 2, n_heads: 2, max_seq_len: 128}",
    "train.max_duration=16ba",
    "train.warmup=2ba",
    "train.eval_interval=16ba",
    "train.save_interval=4ba",
    "train.global_train_batch_size=4",
    "train.device_train_microbatch_size=4",
    "train.wandb.enabled=false",
    "eval.ks=[1]",
    "eval.generation={limit: 2, n: 1, max_new_tokens: 8}",
    "serve.canary_load={clients: 2, seconds: 2, max_tokens: 4}",
]


@dataclass
class Target:
    """One command to kill, and how long it usually runs (the kill lands uniformly inside it)."""

    name: str
    args: list[str]
    seconds: float
    serve: bool = False


TARGETS = [
    Target("data", ["run", "data", "--force"], 40),
    Target("tokenizer", ["run", "tokenizer", "--force"], 30),
    Target("shards", ["run", "shards", "--force"], 40),
    Target("train", ["run", "train", "--force"], 40),
    Target("train-resume", ["run", "train"], 40),  # continues a killed run from its checkpoint (or skips)
    Target("train-2-ranks", ["run", "train", "--force", "--set", "train.nproc=2"], 50),  # kills lathe while two ranks train
    Target("gate", ["gate"], 40),
    Target("serve", ["serve"], 25, serve=True),
]


@dataclass
class Report:
    """What was injected and what held."""

    faults: dict[str, int] = field(default_factory=dict)
    orphans: list[str] = field(default_factory=list)
    blocked_starts: list[str] = field(default_factory=list)
    busy_ports: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (by /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def describe(pid: int) -> str:
    """The pid and the start of its command line."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmdline = "?"
    return f"{pid} {cmdline[:120]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether a new server could listen on ``port``: bound as servers bind (SO_REUSEADDR), so the
    killed server's closed connections waiting out TIME_WAIT do not count as holding it."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def lathe(args: list[str], sets: list[str], log: Path) -> subprocess.Popen:
    """Start one lathe command (its output to ``log``), in a session of its own as a scheduler would."""
    cmd = [LATHE, *args, *[x for s in sets for x in ("--set", s)]]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "WANDB_MODE": "offline"},
    )


def inject(target: Target, sets: list[str], rng: random.Random, log: Path, report: Report, grace_s: float) -> None:
    """Start ``target``, SIGKILL it at a random point, and check that nothing it started outlives it."""
    extra = []
    port = 0
    if target.serve:
        port = free_port()
        extra = [
            "--http-port",
            str(port),
            "--grpc-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--api-port",
            str(free_port()),
        ]
    proc = lathe([*target.args, *extra], sets, log)
    delay = rng.uniform(1.0, target.seconds)
    deadline = time.monotonic() + delay
    started: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        started |= descendants(proc.pid)  # children come and go; remember every one seen
        time.sleep(0.2)
    if proc.poll() is not None:
        if proc.returncode != 0:
            report.blocked_starts.append(f"{target.name}: exited {proc.returncode} before the kill (see {log})")
        report.notes.append(f"{target.name} finished before the kill at {delay:.1f}s")
        return
    started |= descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    report.faults[target.name] = report.faults.get(target.name, 0) + 1
    end = time.monotonic() + grace_s
    while time.monotonic() < end and any(alive(p) for p in started):
        time.sleep(0.5)
    left = [describe(p) for p in started if alive(p)]
    if left:
        report.orphans += [f"{target.name} killed at {delay:.1f}s left: {d}" for d in left]
        for p in started:  # do not let one orphan poison the next rounds
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
    if target.serve and not port_free(port):
        report.busy_ports.append(f"{target.name}: port {port} still bound {grace_s:.0f}s after the kill")


def streaming_locks() -> set[Path]:
    """Streaming's lock files in the temp folder."""
    return set(Path(tempfile.gettempdir()).glob("*_filelock"))


def final_checks(sets: list[str], runs: Path, log: Path, report: Report, before_locks: set[Path]) -> None:
    """Rerun the chain without faults and check the ledger, the MLflow runs and the registry."""
    # A SIGKILLed reader cannot remove its lock files; only what the fault-free rerun leaves counts.
    report.notes.append(f"{len(streaming_locks() - before_locks)} Streaming lock file(s) left by the killed runs")
    before_rerun = streaming_locks()
    # a new training length: the rerun trains (and reads shards) instead of skipping a finished stage
    finished = lathe(["gate"], [*sets, "train.max_duration=20ba"], log).wait() == 0
    report.checks["rerun_completes"] = finished
    profile = runs / "chaos"
    data = json.loads((profile / "data" / "manifest.json").read_text()) if (profile / "data" / "manifest.json").is_file() else {}
    counts = data.get("counts", {})
    report.checks["data_ledger_adds_up"] = bool(counts) and counts.get("kept", -1) + counts.get("dropped", -1) == counts.get(
        "processed"
    )
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lathe")
    running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") if experiment else []
    report.checks["no_mlflow_run_left_running"] = not running
    trained = json.loads((profile / "train" / "manifest.json").read_text())["details"] if finished else {}
    version = str(trained.get("model_version") or "")
    try:
        report.checks["registered_version_exists"] = bool(version) and client.get_model_version("lathe-code", version) is not None
    except mlflow.exceptions.MlflowException:
        report.checks["registered_version_exists"] = False
    report.checks["no_streaming_lock_files_left_by_the_rerun"] = not streaming_locks() - before_rerun
    report.checks["no_orphaned_process"] = not report.orphans
    report.checks["served_ports_released"] = not report.busy_ports
    report.checks["every_start_after_a_kill_ran"] = not report.blocked_starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600, help="time budget for injecting faults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grace", type=float, default=30, help="seconds a killed command's children get to die")
    parser.add_argument("--work", type=Path, default=Path("runs/chaos"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench/chaos.json"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    runs, log = (args.work / "runs").resolve(), (args.work / "chaos.log").resolve()
    sets = [f"run.runs_dir={runs}", *SMALL]
    rng, report = random.Random(args.seed), Report()
    before_locks = streaming_locks()
    # Everything once without faults: later rounds kill stages that have something to redo.
    if lathe(["run", "package"], sets, log).wait() != 0:
        sys.exit(f"the fault-free first run failed; see {log}")
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.seconds:
        target = rng.choice(TARGETS)
        print(f"[{time.monotonic() - t0:5.0f}s] {target.name}", flush=True)
        inject(target, sets, rng, log, report, args.grace)
    final_checks(sets, runs, log, report, before_locks)
    emit(
        {
            "seconds": args.seconds,
            "seed": args.seed,
            "faults_injected": sum(report.faults.values()),
            "faults_by_target": report.faults,
            "checks": report.checks,
            "orphans": report.orphans,
            "blocked_starts": report.blocked_starts,
            "busy_ports": report.busy_ports,
            "notes": report.notes,
        },
        args.out,
    )
    if not all(report.checks.values()):
        sys.exit("chaos: some checks did not hold (see the report)")


if __name__ == "__main__":
    main()
