"""What the sandbox tests check is left running: this process's own sandboxed processes only.

A session runs other sandboxes beside the tests (the Airflow backfill's eval stage, started in the
background, draws uids from the same pool), so a check over every process on the machine could fail
for processes that are not the tests' own.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from lathe.eval.config import SandboxConfig


def leftovers(cfg: SandboxConfig | None = None, *, uids: Collection[int] | None = None, workers: bool = False) -> list[str]:
    """Command lines of this process's descendants (the Sandbox adopts its programs' orphans) that run
    as a sandbox uid of ``cfg``'s pool (``uids``: only those), but not a Python fork-server worker's (its
    processes live on between programs) unless ``workers``: once its Sandbox is closed, none of those
    is left either. Other processes' sandboxes, on a shared machine, are not ours to count."""
    cfg = cfg or SandboxConfig()
    processes = {}  # pid: (uid, parent, command line)
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                processes[int(entry.name)] = (entry.stat().st_uid, parent, cmdline)
        except OSError:
            continue  # gone meanwhile
    skipped = set() if workers else {uid for uid, _, cmdline in processes.values() if "The fork server behind" in cmdline}

    def ours(pid: int) -> bool:
        while pid in processes and pid != os.getpid():
            pid = processes[pid][1]
        return pid == os.getpid()

    pool = set(range(cfg.base_uid, cfg.base_uid + cfg.uid_pool)) if uids is None else set(uids)
    return [cmdline for pid, (uid, _, cmdline) in processes.items() if uid in pool and uid not in skipped and ours(pid)]
