"""A real Spark standalone cluster on loopback: a master and workers from pyspark's own launch classes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyspark


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text(errors="replace")):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"{log.name}: no {pattern!r} within {timeout_s:.0f}s:\n{log.read_text(errors='replace')[-2000:]}")


@contextmanager
def standalone_cluster(work: Path, workers: int = 2, cores: int = 1, memory: str = "1g") -> Iterator[str]:
    """Start a master and ``workers`` workers (``cores`` each) bound to 127.0.0.1; yield the master URL.

    Every process is its own session, killed (group and all) on exit; the REST submission port
    and web UIs are off, so nothing but the master's RPC port is taken.
    """
    home = Path(pyspark.__file__).parent
    spark_class = str(home / "bin" / "spark-class")
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1"}
    work.mkdir(parents=True, exist_ok=True)
    props = work / "spark-defaults.conf"
    props.write_text("spark.master.rest.enabled false\nspark.ui.enabled false\n")
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        log = work / f"{name}.log"
        proc = subprocess.Popen(
            [spark_class, *args, "--properties-file", str(props)],
            env=env,
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(proc)
        return proc, log

    try:
        master, master_log = start(
            "master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", "0"
        )
        _wait_for(master_log, r"I have been elected leader", master, 60)
        for i in range(workers):
            (work / f"worker-{i}").mkdir()
            start(
                f"worker-{i}",
                "org.apache.spark.deploy.worker.Worker",
                url,
                "--host",
                "127.0.0.1",
                "--cores",
                str(cores),
                "--memory",
                memory,
                "--webui-port",
                "0",
                "--work-dir",
                str(work / f"worker-{i}"),
            )
        _wait_for(master_log, rf"(?s)(Registering worker.*){{{workers}}}", master, 60)
        yield url
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
