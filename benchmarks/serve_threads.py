"""Intra-op threads per served model: an fp32 model and its int8 variant, served side by side with
``serve.torch_threads`` 2 (this machine's cores, torch's default) and 1.

    .venv/bin/python benchmarks/serve_threads.py --fp32 runs/tiny/train/hf_model --int8 runs/tiny/quantize/hf_model

One tritonserver per setting (continuous engine), one closed-loop client asking for 32 greedy tokens,
5 s per model, 3 interleaved rounds; tokens/s per round and their median.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit
from lathe.serving.config import ServeConfig
from lathe.serving.loadtest import grpc_sender, run_load
from lathe.serving.package import build_repositories
from lathe.serving.server import TritonServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, required=True, help="an fp32 HF model directory")
    parser.add_argument("--int8", type=Path, required=True, help="its int8 variant (the quantize stage's hf_model)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/serve_threads.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lathe-serve-threads-"))
    results: dict[str, object] = {}
    try:
        for threads in (2, 1):
            cfg = ServeConfig(max_batch_size=8, engine="continuous", torch_threads=threads)
            roots = build_repositories(args.fp32, 1, work / f"threads-{threads}", cfg, {"int8": (args.int8, 1)})
            with TritonServer(roots["python"], 0, 0, 0, log_file=work / "triton.log") as server:
                senders = {m: grpc_sender(server.endpoints.grpc, m, 32) for m in ("lathe-code", "lathe-code-int8")}
                rounds: dict[str, list[float]] = {m: [] for m in senders}
                for send in senders.values():
                    send("warm up")
                for _ in range(args.repeats):
                    for model, send in senders.items():
                        rounds[model].append(round(run_load(send, 1, args.seconds).tokens_per_s, 1))
            for model, values in rounds.items():
                results[f"{model}, {threads} thread(s): tokens/s rounds"] = values
                results[f"{model}, {threads} thread(s): median tokens/s"] = median(values)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(results, args.out)


if __name__ == "__main__":
    main()
