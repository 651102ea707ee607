"""Start and stop a real `tritonserver`: the binary the `nvidia-pytriton` wheel ships.

The wheel's server has the Python backend only, laid out for pytriton's own use; this
module assembles a backend directory from it and sets the environment the stub needs
(see ../shared/environment.md): the wheel's bundled libraries and the interpreter's
libpython on ``LD_LIBRARY_PATH``, and the venv's ``bin`` first on ``PATH`` so that models
import the venv's packages.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from lathe.core.errors import InputError, LatheError
from lathe.core.process import supervised


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_busy(port: int) -> bool:
    """Whether something holds ``port`` on the loopback interface."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError:
        raise LatheError("nvidia-pytriton is not installed; run `make setup`") from None
    return Path(pytriton.__file__).parent / "tritonserver"


def port_holder(port: int) -> str | None:
    """Who listens on a loopback ``port``: a lathe tritonserver named by pid and repository, another
    process by pid and name, or None when nobody does (or it cannot be seen)."""
    import psutil

    try:
        listening = [
            c
            for c in psutil.net_connections(kind="tcp")
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid
        ]
    except psutil.AccessDenied:
        return None
    for conn in listening:
        try:
            cmdline = psutil.Process(conn.pid).cmdline()
        except psutil.Error:
            continue
        if cmdline and cmdline[0].endswith("tritonserver"):
            repo = next((a.split("=", 1)[1] for a in cmdline if a.startswith("--model-repository=")), "?")
            return (
                f"a tritonserver left running (pid {conn.pid}, repository {repo}), probably by a killed "
                f"`lathe serve` (`kill {conn.pid}` stops it)"
            )
        return f"pid {conn.pid} ({' '.join(cmdline)[:80]})"
    return None


def backend_directory(dest: Path) -> Path:
    """A Triton backend directory with the Python backend and the stub for this interpreter."""
    root = _pytriton_root()
    stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
    if not stub.is_file():
        raise LatheError(
            f"pytriton has no Python-backend stub for Python {sys.version_info.major}.{sys.version_info.minor} ({stub})"
        )
    python = dest / "python"
    python.mkdir(parents=True, exist_ok=True)
    for src in (
        root / "backends" / "python" / "libtriton_python.so",
        root / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ):
        shutil.copy2(src, python / src.name)
    return dest


@dataclass
class Endpoints:
    """Where a running server listens."""

    http: str
    grpc: str
    metrics: str


class TritonServer:
    """A `tritonserver` process over one model repository, in its own session (process group).

    Use as a context manager, or ``start()`` / ``stop()``; ``stop`` sends SIGTERM to the group,
    then SIGKILL after ``stop_timeout_s``. The server also gets SIGTERM from the kernel when the
    thread that started it dies (``PR_SET_PDEATHSIG``), so a killed parent leaves no server behind:
    start it from a thread that lives as long as the server should.
    """

    def __init__(
        self,
        repository: Path,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        log_file: Path | None = None,
        ready_timeout_s: float = 180.0,
        stop_timeout_s: float = 15.0,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.ports = {"http": http_port or free_port(), "grpc": grpc_port or free_port(), "metrics": metrics_port or free_port()}
        self.log_file = log_file
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self._scratch: Path | None = None

    @property
    def endpoints(self) -> Endpoints:
        """HTTP, gRPC and metrics addresses."""
        p = self.ports
        return Endpoints(f"127.0.0.1:{p['http']}", f"127.0.0.1:{p['grpc']}", f"http://127.0.0.1:{p['metrics']}/metrics")

    def command(self, backends: Path) -> list[str]:
        """The tritonserver command line (loopback only; the repository as packaged, no auto-completion)."""
        binary = _pytriton_root() / "bin" / "tritonserver"
        p = self.ports
        return [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            f"--http-port={p['http']}",
            f"--grpc-port={p['grpc']}",
            f"--metrics-port={p['metrics']}",
            "--allow-gpu-metrics=false",
            "--disable-auto-complete-config",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--log-verbose=0",
            # a unique shared-memory prefix: two servers on one machine must not share regions
            f"--backend-config=python,shm-region-prefix-name=lathe{uuid.uuid4().hex[:12]}",
        ]

    def environment(self) -> dict[str, str]:
        """The stub's libraries and the venv's interpreter first."""
        env = dict(os.environ)
        libs = [str(_pytriton_root().parent.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def start(self) -> TritonServer:
        """Launch and wait until the server is ready; raises with the log's tail if it dies first."""
        if not self.repository.is_dir():
            raise InputError(f"model repository {self.repository} not found; run `lathe run package` first")
        for name, port in self.ports.items():
            if port_busy(port):
                holder = port_holder(port)
                by = f" by {holder}" if holder else ""
                raise InputError(f"{name} port {port} is in use{by}; stop it or pass another --{name}-port")
        self._scratch = Path(tempfile.mkdtemp(prefix="lathe-triton-"))
        backends = backend_directory(self._scratch / "backends")
        log = self.log_file or self._scratch / "tritonserver.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_path = log
        with open(log, "ab") as out:
            # a `lathe serve` killed with -9 must leave neither Triton answering on its ports nor its
            # Python-backend stubs, even when killed while Triton loads models and does not yet stop
            self.process = subprocess.Popen(
                supervised(self.command(backends), self.stop_timeout_s),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self) -> None:
        """Poll /v2/health/ready until 200, the process exits, or the timeout passes."""
        url = f"http://{self.endpoints.http}/v2/health/ready"
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise LatheError(
                    f"tritonserver exited with status {self.process.returncode} before it was ready:\n{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise LatheError(f"tritonserver not ready after {self.ready_timeout_s:.0f}s:\n{self._log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM the process group, SIGKILL it after the grace period; returns the exit status."""
        code = None
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                code = self.process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                code = self.process.wait()
            except ProcessLookupError:
                code = self.process.wait()
            try:  # stubs that outlived the server (they share its group)
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
