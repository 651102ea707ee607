"""What a training step costs on this CPU, for the choices the CPU profile (configs/cpu.yaml) makes:
model shape and vocabulary, fp32 against bf16 autocast, eager against torch.compile, AdamW's fused kernel.

    .venv/bin/python benchmarks/cpu_train_choices.py [--steps 4] [--out runs/bench/cpu_train_choices.json]

Each row times forward + backward + AdamW steps of lathe's model (transformers' Llama, SwiGLU, tied
embeddings, SDPA attention) on random token ids, after one warm-up step, with torch's threads set to the
machine's cores. Beside the rows: the GEMM throughput of this CPU in fp32 and bf16 (what says whether bf16
can help: without native bf16 instructions it is emulated) and torch's CPU capability; and the profile's
row again in a fresh process under each memory allocator, glibc's and jemalloc's (`lathe.core.allocator`,
as `make cpu-profile` trains), since a step frees and re-faults hundreds of megabytes of activations.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import emit
from lathe.core.allocator import jemalloc_env
from lathe.training.config import ModelConfig
from lathe.training.model import ffn_hidden

# (d_model, layers, heads, vocabulary, seq_len, batch, precision, compiled, fused AdamW)
ROWS = [
    (256, 4, 4, 4096, 512, 8, "fp32", False, False),  # tiny's and the CPU profile's shape
    (256, 4, 4, 4096, 512, 8, "bf16", False, False),
    (256, 4, 4, 4096, 512, 8, "fp32", True, False),
    (256, 4, 4, 4096, 512, 8, "fp32", False, True),
    (256, 4, 4, 8192, 512, 8, "fp32", False, False),
    (256, 4, 4, 4096, 256, 16, "fp32", False, False),
    (192, 4, 4, 4096, 512, 8, "fp32", False, False),
    (256, 6, 4, 4096, 512, 8, "fp32", False, False),
    (384, 6, 6, 4096, 512, 8, "fp32", False, False),
]


def gemm_gflops(dtype: torch.dtype, n: int = 30) -> float:
    """GFLOP/s of a (4096 x 256) @ (256 x 704) matmul, the shape of the profile's MLP."""
    a, b = torch.randn(4096, 256, dtype=dtype), torch.randn(256, 704, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(n):
        a @ b
    return 2 * 4096 * 256 * 704 * n / (time.perf_counter() - start) / 1e9


def step_tokens_per_s(row: tuple, steps: int) -> dict:
    """Tokens per second of training steps of one configuration."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d, layers, heads, vocab, seq, batch, precision, compiled, fused = row
    shape = ModelConfig(d_model=d, n_layers=layers, n_heads=heads, max_seq_len=seq)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=ffn_hidden(shape),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=seq,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    forward = torch.compile(model) if compiled else model
    ids = torch.randint(0, vocab, (batch, seq))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # warm-up (and compilation)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    per_step = (time.perf_counter() - start) / steps
    return {
        "shape": f"{layers} x {d}",
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "vocabulary": vocab,
        "seq_len": seq,
        "batch": batch,
        "precision": precision,
        "compiled": compiled,
        "fused_adamw": fused,
        "tokens_per_s": round(batch * seq / per_step),
    }


def in_fresh_process(row: int, steps: int, env: dict[str, str]) -> dict:
    """One row timed by a new interpreter with ``env`` (an allocator is chosen when a process starts)."""
    cmd = [sys.executable, __file__, "--row", str(row), "--steps", str(steps)]
    done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--row", type=int, help="time this row alone and print it as JSON (for a fresh process)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/cpu_train_choices.json"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.row is not None:
        print(json.dumps(step_tokens_per_s(ROWS[args.row], args.steps)))
        return
    jemalloc = jemalloc_env()
    report = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "gemm_gflops_fp32": round(gemm_gflops(torch.float32), 1),
        "gemm_gflops_bf16": round(gemm_gflops(torch.bfloat16, n=3), 1),
        "rows": [step_tokens_per_s(row, args.steps) for row in ROWS],
        # row 4: the profile's shape and vocabulary (4 x 256, 8,192)
        "allocator_glibc": in_fresh_process(4, args.steps, {}),
        "allocator_jemalloc": in_fresh_process(4, args.steps, jemalloc) if jemalloc else "libjemalloc2 not installed",
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
