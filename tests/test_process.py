"""Children that die with lathe: a `lathe` killed with -9 takes its launcher (and server) with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# The child: on SIGINT (Python's KeyboardInterrupt) it cleans up like Composer's launcher does.
CHILD = """
import os, sys, time
open(sys.argv[1] + ".pid", "w").write(str(os.getpid()))
try:
    time.sleep(60)
except KeyboardInterrupt:
    open(sys.argv[1] + ".cleaned", "w").write("ok")
"""

# The parent: starts the child through the trampoline, then waits (as `lathe train` waits on the launcher).
PARENT = """
import subprocess, sys, signal
from lathe.core.process import dying_with_this_thread
subprocess.run(dying_with_this_thread([sys.executable, "-c", sys.argv[1], sys.argv[2]], signal.SIGINT))
"""


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan waits in that state for a reaper that may never come in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(path: Path, seconds: float = 20) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not path.exists():
        time.sleep(0.1)
    return path.exists()


def test_a_parent_killed_with_minus_9_takes_its_child_with_it(tmp_path: Path) -> None:
    mark = tmp_path / "child"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(mark)])
    assert wait_for(mark.with_suffix(".pid"))
    child = int(mark.with_suffix(".pid").read_text())
    parent.kill()  # kill -9: no handler in the parent runs
    parent.wait()
    assert wait_for(mark.with_suffix(".cleaned"))  # the kernel sent SIGINT and the child cleaned up
    end = time.monotonic() + 10
    while time.monotonic() < end and running(child):
        time.sleep(0.1)
    if running(child):
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the child outlived its killed parent")
