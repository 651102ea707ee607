"""Reading a child process's output with a deadline: a child that never prints (or hangs before it does)
fails its test in time instead of blocking it until pytest-timeout ends the whole session's process."""

from __future__ import annotations

import queue
import subprocess
import threading
import time


def wait_for_line(proc: subprocess.Popen, text: str, timeout_s: float) -> str | None:
    """The first line of ``proc``'s stdout (a text pipe) that contains ``text``; None when the process ends its
    output, or ``timeout_s`` passes, first. A daemon thread reads the pipe, and goes on draining it afterwards
    (so a chatty child never blocks on a full pipe), until the child closes it."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)  # end of output

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            return None
        if line is None:
            return None
        if text in line:
            return line
    return None
