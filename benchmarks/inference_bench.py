"""Smaller, faster served models: the fp32 model, its int8 variant and a distilled half-depth student, side by side.

    .venv/bin/python benchmarks/inference_bench.py --config configs/tiny.yaml [--seconds 5] [--repeats 3] [--clients 1 8]

It runs the `train` stage (skipped when done), then `quantize` and `distill` with the train stage's
version as the teacher, and measures each of the three models the same way: parameters and bytes of
weights on disk, validation loss on the same batches of the shards' validation split, HumanEval pass@k
(the eval stage's settings), greedy-token agreement with the fp32 model on the eval prompts, and served
latency p50/p95 and tokens/s through one tritonserver holding all three (`package` writes them so) at
each client count. A second table serves fp32 and int8 of gpu-125m's shape (12 x 768, random weights:
speed only), where the matrix products, which int8 speeds up, are most of a token's time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit
from lathe.core.quant import bytes_on_disk, load_causal_lm, write_int8
from lathe.pipelines.config import load_config
from lathe.pipelines.runner import run_pipeline
from lathe.pipelines.stages import eval_prompts
from lathe.serving.config import ServeConfig
from lathe.serving.loadtest import grpc_sender, run_load
from lathe.serving.package import build_repositories, variant_name
from lathe.serving.quantize import greedy_tokens, mean_losses, token_agreement, validation_batches
from lathe.serving.server import TritonServer

FP32, INT8, STUDENT = "fp32", "int8", "distilled student"
VARIANT = {INT8: "int8", STUDENT: "distill"}  # each variant's name in the package (lathe-code-int8, lathe-code-distill)


def served(
    models: dict[str, Path], clients: list[int], seconds: float, repeats: int, max_tokens: int, work: Path
) -> dict[str, dict[str, Any]]:
    """Latency and tokens/s of each model (the first is the main one, the others its variants) under closed-loop load:
    the median of ``repeats`` rounds, each round measuring every model at every client count in turn, so that the
    machine's drift (it is shared) falls on all of them alike."""
    (main, main_dir), *rest = models.items()
    cfg = ServeConfig(max_batch_size=8, engine="continuous")
    roots = build_repositories(main_dir, 1, work / "package", cfg, {VARIANT[name]: (path, 1) for name, path in rest})
    names = {main: cfg.model_name, **{name: variant_name(cfg.model_name, VARIANT[name]) for name, _ in rest}}
    rounds: dict[str, list[Any]] = {}
    with TritonServer(roots["python"], 0, 0, 0, log_file=work / "triton.log") as server:
        senders = {label: grpc_sender(server.endpoints.grpc, triton_model, max_tokens) for label, triton_model in names.items()}
        for send in senders.values():
            send("warm up")
        for _ in range(repeats):
            for label, send in senders.items():
                for c in clients:
                    rounds.setdefault(f"{label} @{c}", []).append(run_load(send, c, seconds))
    out: dict[str, dict[str, Any]] = {}
    for key, reports in rounds.items():
        out[key] = {
            "p50_ms": round(median(r.p50_s for r in reports) * 1000, 1),
            "p95_ms": round(median(r.p95_s for r in reports) * 1000, 1),
            "tokens_per_s": round(median(r.tokens_per_s for r in reports), 1),
            "tokens_per_s_rounds": [round(r.tokens_per_s, 1) for r in reports],
            "requests": sum(r.requests for r in reports),
            "failures": sum(r.failures for r in reports),
        }
        print(f"served {key}: {out[key]}", flush=True)
    return out


def big_shape(config: Path, tokenizer: Path, work: Path) -> dict[str, Path]:
    """fp32 and int8 checkpoints of gpu-125m's model shape (random weights), with ``tokenizer``'s vocabulary."""
    import torch

    from lathe.tokenizer.special import EOS, PAD
    from lathe.tokenizer.vocab import copy_tokenizer, load_tokenizer
    from lathe.training.model import build_model

    shape = load_config(config, []).train.model
    tok = load_tokenizer(tokenizer)
    torch.manual_seed(0)
    model = build_model(shape, tok.get_vocab_size(), tok.token_to_id(EOS), tok.token_to_id(PAD), shape.max_seq_len)
    fp32 = work / "big-fp32"
    model.model.save_pretrained(fp32)
    copy_tokenizer(tokenizer, fp32)
    return {FP32: fp32, INT8: write_int8(fp32, work / "big-int8")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/tiny.yaml"))
    parser.add_argument("--seconds", type=float, default=5.0, help="load held per model, client count and round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each figure is the median")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--big-config", type=Path, default=Path("configs/gpu-125m.yaml"), help="the shape of the speed-only table"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench/inference_bench.json"))
    args = parser.parse_args()

    from lathe.eval.evaluate import evaluate_model, report_figures

    cfg = load_config(args.config, [])
    profile_dir = Path(cfg.run.runs_dir) / cfg.profile
    run_pipeline(cfg, ["train"])
    trained = json.loads((profile_dir / "train" / "train_summary.json").read_text())
    teacher = f"models:/{trained['registered_model']}/{trained['model_version']}"
    variants = load_config(args.config, ["serve.quantization=int8", f"distill.teacher={teacher}"])
    run_pipeline(variants, ["quantize", "distill"])
    dirs = {
        FP32: profile_dir / "train" / "hf_model",
        INT8: profile_dir / "quantize" / "hf_model",
        STUDENT: profile_dir / "distill" / "hf_model",
    }

    results: dict[str, Any] = {}
    models = {name: load_causal_lm(d) for name, d in dirs.items()}
    student = json.loads((profile_dir / "distill" / "train_summary.json").read_text())
    parameters = {FP32: trained["parameters"], INT8: trained["parameters"], STUDENT: student["parameters"]}
    pad = models[FP32].config.pad_token_id
    work = Path(tempfile.mkdtemp(prefix="lathe-inference-bench-"))
    try:
        batches = validation_batches(trained["validation"]["val"], work / "stream-cache", pad, cfg.serve.quantize)
        losses = mean_losses(models, batches)
        prompts = eval_prompts(cfg)[: cfg.serve.quantize.agreement_prompts]
        greedy = {name: greedy_tokens(d, prompts, cfg.serve.quantize.agreement_tokens) for name, d in dirs.items()}
        for name, d in dirs.items():
            figures = report_figures(evaluate_model(str(d), cfg.eval, work / "eval" / name.replace(" ", "-")))
            results[name] = {
                "parameters": parameters[name],
                "weight_bytes": bytes_on_disk(d),
                "val_loss": round(losses[name], 4),
                **{k: v for k, v in figures.items() if k.startswith("pass@")},
                **token_agreement(greedy[FP32], greedy[name]),
            }
            print(f"{name}: {results[name]}", flush=True)
        speed = served(dirs, args.clients, args.seconds, args.repeats, args.max_tokens, work)
        results["served"] = speed
        big = big_shape(args.big_config, dirs[FP32], work)
        results["served, gpu-125m shape (random weights)"] = big_speed = served(
            big, args.clients, args.seconds, args.repeats, args.max_tokens, work / "big"
        )
        results["weight_bytes, gpu-125m shape"] = {name: bytes_on_disk(d) for name, d in big.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    c0 = args.clients[0]
    for c in args.clients:
        for name in (INT8, STUDENT):
            results[f"tokens/s ratio {name}/fp32 @{c}"] = round(
                speed[f"{name} @{c}"]["tokens_per_s"] / speed[f"{FP32} @{c}"]["tokens_per_s"], 2
            )
        results[f"tokens/s ratio int8/fp32 @{c}, gpu-125m shape"] = round(
            big_speed[f"{INT8} @{c}"]["tokens_per_s"] / big_speed[f"{FP32} @{c}"]["tokens_per_s"], 2
        )
    results["val_loss ratio int8/fp32"] = round(losses[INT8] / losses[FP32], 4)
    results["val_loss ratio student/fp32"] = round(losses[STUDENT] / losses[FP32], 4)
    results["goal int8 >= 1.3x fp32 tokens/s @1 client"] = results[f"tokens/s ratio int8/fp32 @{c0}"] >= 1.3
    results["goal int8 val loss within 2%"] = results["val_loss ratio int8/fp32"] <= 1.02
    results["goal student >= 1.6x fp32 tokens/s @1 client"] = results[f"tokens/s ratio {STUDENT}/fp32 @{c0}"] >= 1.6
    emit(results, args.out)


if __name__ == "__main__":
    main()
