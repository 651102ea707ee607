"""Serving latency and throughput: Triton with dynamic batching (each execute() one batch), Triton
with the continuous engine (one running batch that requests join at every decode step), Triton
without batching, and the minimal single-request server a user would otherwise write (stdlib
HTTP + `generate`, one request at a time), all over the same packaged model, at several concurrencies.

    .venv/bin/python benchmarks/serve_bench.py --package runs/tiny/package [--seconds 8] [--concurrency 1 8 32]

Every request is greedy with the same ``--max-tokens``; clients are closed-loop (each sends
its next request when its last one ends). The baseline does not stream, so its time to
first token is its whole latency, as it would be for its users.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit
from lathe.serving.config import ServeConfig
from lathe.serving.loadtest import LoadReport, Send, grpc_sender, run_load
from lathe.serving.package import build_repositories, checkpoint_dir
from lathe.serving.server import TritonServer, free_port


def baseline_server(model_dir: Path, max_tokens: int) -> tuple[ThreadingHTTPServer, str]:
    """One model, one lock, `generate` per request: what a hand-written server does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            enc = tok(body["prompt"], return_tensors="pt", add_special_tokens=False, return_token_type_ids=False)
            with lock, torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            new = out[0, enc.input_ids.shape[1] :].tolist()
            answer = json.dumps({"text": tok.decode(new, skip_special_tokens=True), "tokens": len(new)}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def baseline_sender(url: str) -> Send:
    def send(prompt: str) -> tuple[float, float, int]:
        t0 = time.perf_counter()
        request = urllib.request.Request(url, data=json.dumps({"prompt": prompt}).encode())
        with urllib.request.urlopen(request, timeout=600) as r:
            tokens = json.loads(r.read())["tokens"]
        latency = time.perf_counter() - t0
        return latency, latency, tokens

    return send


PER_BATCH, CONTINUOUS = "triton, dynamic batching", "triton, continuous batching"
# The Triton servers compared: each execute() as one batch, one running batch joined at every step, one request at a time.
SERVERS = {
    PER_BATCH: ServeConfig(max_batch_size=32, engine="batch"),
    CONTINUOUS: ServeConfig(max_batch_size=32, engine="continuous"),
    "triton, no batching": ServeConfig(max_batch_size=32, engine="batch", dynamic_batching=False),
}


def _ratio(a: object, b: object) -> float:
    return round(float(a) / max(float(b), 1e-9), 2)


def row(name: str, r: LoadReport) -> str:
    ms = lambda s: f"{s * 1000:.0f}"  # noqa: E731
    return (
        f"| {name} | {r.clients} | {r.requests} | {r.failures} | {ms(r.p50_s)} | {ms(r.p95_s)} | {ms(r.p99_s)} | "
        f"{ms(r.ttft_p50_s)} | {r.requests_per_s:.2f} | {r.tokens_per_s:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=Path("runs/tiny/package"), help="the package stage's folder")
    parser.add_argument("--seconds", type=float, default=8.0, help="load held per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/serve_bench.json"))
    args = parser.parse_args()
    info = json.loads((args.package / "package.json").read_text())
    model_dir = checkpoint_dir(Path(info["repository"]), info["triton_model"], info["version"])
    results: dict[str, dict[str, object]] = {}
    lines = [
        "| server | clients | requests | failed | p50 ms | p95 ms | p99 ms | first token p50 ms | req/s | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    work = Path(tempfile.mkdtemp(prefix="lathe-serve-bench-"))
    try:
        for name, cfg in SERVERS.items():
            roots = build_repositories(model_dir, int(info["version"]), work / name.replace(" ", "").replace(",", "-"), cfg)
            with TritonServer(roots["python"], 0, 0, 0, log_file=work / "triton.log") as server:
                send = grpc_sender(server.endpoints.grpc, info["triton_model"], args.max_tokens)
                send("warm up")
                for c in args.concurrency:
                    r = run_load(send, c, args.seconds)
                    results[f"{name} @{c}"] = r.as_dict()
                    lines.append(row(name, r))
                    print(lines[-1], flush=True)
        server, url = baseline_server(model_dir, args.max_tokens)
        send = baseline_sender(url)
        send("warm up")
        for c in args.concurrency:
            r = run_load(send, c, args.seconds)
            results[f"single-request server @{c}"] = r.as_dict()
            lines.append(row("single-request server", r))
            print(lines[-1], flush=True)
        server.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for c in args.concurrency:
        batched, continuous = results[f"{PER_BATCH} @{c}"], results[f"{CONTINUOUS} @{c}"]
        single = results[f"single-request server @{c}"]
        results[f"throughput ratio triton-batched/single-request @{c}"] = _ratio(batched["tokens_per_s"], single["tokens_per_s"])
        results[f"throughput ratio continuous/per-batch @{c}"] = _ratio(continuous["tokens_per_s"], batched["tokens_per_s"])
        # the latency goal: first token at c clients against 1 client
        results[f"first-token p50 ratio continuous @{c}/@{args.concurrency[0]}"] = _ratio(
            continuous["ttft_p50_s"], results[f"{CONTINUOUS} @{args.concurrency[0]}"]["ttft_p50_s"]
        )
    print("\n".join(lines))
    emit(results, args.out)


if __name__ == "__main__":
    main()
