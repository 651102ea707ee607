"""The memory allocator a CPU training process runs with: jemalloc, when Debian's libjemalloc2 is installed.

A training step on the CPU allocates and frees hundreds of megabytes of activations and gradients. glibc's
malloc hands blocks that large back to the kernel when they are freed (mmap above its threshold) and takes
them again, zeroed, page fault by page fault, in the next step: ~50,000 faults a second and a tenth of the
CPU's time in the kernel on the CPU profile's model. jemalloc keeps freed memory for reuse. An allocator is
chosen when a process starts, so it is set in the environment of the process that trains
(``make cpu-profile`` starts `lathe` under it), as PyTorch's own CPU launcher
(``torch.backends.xeon.run_cpu --enable-jemalloc``) does; that launcher only looks for an unversioned
``libjemalloc.so``, which Debian ships in the -dev package alone.

    env $(python -m lathe.core.allocator) lathe run ...   # jemalloc's settings, or nothing when it is missing
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

# Where Debian, Red Hat and source installs put the runtime library.
JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)
# Keep freed pages (no decay back to the kernel) and purge from a background thread: a training process
# reuses the same sizes every step. Measured in benchmarks/cpu_train_choices.py.
MALLOC_CONF = "background_thread:true,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"


def jemalloc_library() -> str | None:
    """The path of libjemalloc.so.2, or None when it is not installed."""
    return next((p for p in JEMALLOC_PATHS if Path(p).is_file()), None)


def jemalloc_env() -> dict[str, str]:
    """The environment that starts a process on jemalloc (LD_PRELOAD and MALLOC_CONF); empty when it is missing."""
    library = jemalloc_library()
    if library is None:
        return {}
    preload = [library, *(p for p in os.environ.get("LD_PRELOAD", "").split(":") if p and p != library)]
    return {"LD_PRELOAD": ":".join(preload), "MALLOC_CONF": os.environ.get("MALLOC_CONF", MALLOC_CONF)}


if __name__ == "__main__":
    print(" ".join(f"{k}={shlex.quote(v)}" for k, v in jemalloc_env().items()))
