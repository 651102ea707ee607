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


# A server that ignores SIGTERM (busy loading models) and has a helper in its group (a Python-backend stub).
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
stub = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
open(sys.argv[1] + ".pids", "w").write(f"{os.getpid()} {stub.pid}")
time.sleep(120)
"""

SUPERVISING_PARENT = """
import subprocess, sys
from lathe.core.process import supervised
subprocess.run(supervised([sys.executable, "-c", sys.argv[1], sys.argv[2]], grace_s=2), start_new_session=True)
"""


def test_a_supervised_command_and_its_group_die_with_the_parent_even_when_they_ignore_sigterm(tmp_path: Path) -> None:
    mark = tmp_path / "server"
    parent = subprocess.Popen([sys.executable, "-c", SUPERVISING_PARENT, STUBBORN, str(mark)])
    assert wait_for(mark.with_suffix(".pids"))
    pids = [int(p) for p in mark.with_suffix(".pids").read_text().split()]
    parent.kill()  # kill -9
    parent.wait()
    end = time.monotonic() + 15  # the 2 s grace, then SIGKILL for the whole group
    while time.monotonic() < end and any(running(p) for p in pids):
        time.sleep(0.1)
    left = [p for p in pids if running(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert left == [], "the server or its stub outlived the killed parent"


def test_a_supervised_command_that_exits_takes_its_leftovers_and_keeps_its_status(tmp_path: Path) -> None:
    from lathe.core.process import supervised

    leaver = (
        "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        "open(sys.argv[1], 'w').write(str(p.pid)); sys.exit(3)"
    )
    done = subprocess.run(supervised([sys.executable, "-c", leaver, str(tmp_path / "left")], grace_s=2), start_new_session=True)
    assert done.returncode == 3
    left = int((tmp_path / "left").read_text())
    end = time.monotonic() + 5
    while time.monotonic() < end and running(left):
        time.sleep(0.1)
    assert not running(left)
