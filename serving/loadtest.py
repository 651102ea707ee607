"""Closed-loop load: N clients, each sending its next request as soon as its last one ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lathe.core.models import MODEL_NAME

# One request: returns (time to first token, latency, tokens generated), raises on failure.
Send = Callable[[str], tuple[float, float, int]]

PROMPTS = [
    "def fibonacci(n):\n",
    "import os\n\ndef list_files(path):\n",
    "class Stack:\n    def __init__(self):\n",
    'def parse_args(argv):\n    """Parse the command line."""\n',
    "for i in range(10):\n",
    "function add(a, b) {\n",
]


@dataclass
class LoadReport:
    """What a load test measured (seconds, requests, tokens)."""

    clients: int
    seconds: float
    requests: int
    failures: int
    tokens: int
    p50_s: float
    p95_s: float
    p99_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    requests_per_s: float
    tokens_per_s: float
    errors: list[str]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def grpc_sender(url: str, model: str = MODEL_NAME, max_tokens: int = 16) -> Send:
    """A ``Send`` that streams over gRPC (greedy, fixed length: every request costs the same)."""
    from lathe.serving.client import complete

    def send(prompt: str) -> tuple[float, float, int]:
        c = complete(url, prompt, model, max_tokens=max_tokens)
        return c.first_token_s, c.latency_s, len(c.token_ids)

    return send


def run_load(send: Send, clients: int, seconds: float) -> LoadReport:
    """Hold ``clients`` concurrent clients for ``seconds``; every request ends counted as done or failed."""
    latencies: list[float] = []
    firsts: list[float] = []
    tokens = [0]
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        i = k
        while time.monotonic() < stop_at:
            prompt = PROMPTS[i % len(PROMPTS)]
            i += clients
            try:
                first, latency, n = send(prompt)
            except Exception as exc:  # a failed request is the measurement, not a crash
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                latencies.append(latency)
                firsts.append(first)
                tokens[0] += n

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    lat = np.array(latencies or [float("nan")])
    ttft = np.array(firsts or [float("nan")])
    return LoadReport(
        clients=clients,
        seconds=round(wall, 3),
        requests=len(latencies),
        failures=len(errors),
        tokens=tokens[0],
        p50_s=float(np.percentile(lat, 50)),
        p95_s=float(np.percentile(lat, 95)),
        p99_s=float(np.percentile(lat, 99)),
        ttft_p50_s=float(np.percentile(ttft, 50)),
        ttft_p95_s=float(np.percentile(ttft, 95)),
        requests_per_s=len(latencies) / wall,
        tokens_per_s=tokens[0] / wall,
        errors=sorted(set(errors))[:5],
    )
