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
