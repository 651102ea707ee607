"""Child processes that die with lathe: a `lathe` killed with -9 (the OOM killer, a preempted
node) must not leave a server answering on its ports or training ranks writing into a folder
the next run is about to reuse."""

from __future__ import annotations

import os
import signal
import sys

# Run as the child-to-be: ask the kernel to send it a signal when the thread that started it dies,
# then become the real command. A parent that died before prctl ran is caught by the ppid check.
_DIE_WITH_PARENT = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(sys.argv[2]))  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)


def dying_with_this_thread(cmd: list[str], sig: signal.Signals = signal.SIGTERM) -> list[str]:
    """``cmd`` (its first item an executable path) wrapped so the process gets ``sig`` when the
    thread that starts it dies (Linux ``PR_SET_PDEATHSIG``). Pick the signal on which the command
    cleans up its own children (tritonserver: SIGTERM; a Python launcher: SIGINT, its KeyboardInterrupt)."""
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), str(int(sig)), *cmd]


# Run as the child-to-be, in its own process group: die-with-parent as above, but instead of becoming
# the command, start it in this group and stay as its supervisor. On SIGTERM (the parent died, or
# someone stops the server) it forwards SIGTERM, gives the command ``grace`` seconds, then SIGKILLs
# the whole group; when the command exits by itself, whatever it left in the group (Triton's
# Python-backend stubs) is killed too. So nothing of the command outlives it, even a command that
# is busy (loading models) when told to stop.
_SUPERVISE = (
    "import ctypes, os, signal, subprocess, sys, time\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "grace, group = float(sys.argv[2]), os.getpgid(0)\n"
    "child = subprocess.Popen(sys.argv[3:])\n"
    "def others():\n"
    "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "        try:\n"
    "            fields = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()\n"
    "        except OSError:\n"
    "            continue\n"
    "        if int(fields[2]) == group and int(pid) != os.getpid() and fields[0] != 'Z':\n"
    "            yield int(pid)\n"
    "def finish(code):\n"
    "    for pid in others():\n"
    "        try:\n"
    "            os.kill(pid, signal.SIGKILL)\n"
    "        except ProcessLookupError:\n"
    "            pass\n"
    "    sys.exit(code if code >= 0 else 128 - code)\n"
    "deadline = []\n"
    "def stop(signum, frame):  # only notes the time: waiting inside a handler would race the loop's wait\n"
    "    if not deadline:\n"
    "        child.send_signal(signal.SIGTERM)\n"
    "        deadline.append(time.monotonic() + grace)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides\n"
    "while child.poll() is None:\n"
    "    if deadline and time.monotonic() > deadline[0]:\n"
    "        os.killpg(group, signal.SIGKILL)\n"
    "    time.sleep(0.1)\n"
    "finish(child.returncode)\n"
)


def supervised(cmd: list[str], grace_s: float) -> list[str]:
    """``cmd`` under a supervisor that dies with the thread starting it (``PR_SET_PDEATHSIG``) and takes
    the command's whole process group with it: SIGTERM, ``grace_s`` to stop, then SIGKILL. Start it with
    ``start_new_session=True`` so the group is the command's alone."""
    return [sys.executable, "-c", _SUPERVISE, str(os.getpid()), str(grace_s), *cmd]
