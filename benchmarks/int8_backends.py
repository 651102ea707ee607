"""Which int8 implementation decodes fastest on this CPU: PyTorch's dynamic quantisation (what lathe uses) or
torchao's int8 configs, against fp32, on gpu-125m's shape (12 x 768, random weights: speed only).

    .venv/bin/pip install -q --no-deps --target /tmp/torchao torchao   # kept out of the product's lock
    .venv/bin/python benchmarks/int8_backends.py --torchao-path /tmp/torchao [--new-tokens 32]

Greedy ``generate`` with the KV cache, batches of 1 and 8 prompts of 100 tokens, in process (no server):
the kernels alone.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit


def tokens_per_s(model: Any, batch: int, new_tokens: int, repeats: int = 2) -> float:
    """Generated tokens per second of greedy decoding, after one warm-up call."""
    import torch

    ids = torch.randint(3, 4096, (batch, 100), generator=torch.Generator().manual_seed(0))
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kwargs)
        start = time.perf_counter()
        for _ in range(repeats):
            model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
    return batch * new_tokens * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torchao-path", type=Path, help="where torchao is installed (pip --target); without it, PyTorch only")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/int8_backends.json"))
    args = parser.parse_args()
    if args.torchao_path:
        sys.path.insert(0, str(args.torchao_path))
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lathe.core.quant import quantize_int8

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32768,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=0,
    )
    fp32 = LlamaForCausalLM(config).eval()
    models = {"fp32": fp32, "torch.ao dynamic int8 (lathe)": quantize_int8(copy.deepcopy(fp32))}
    if args.torchao_path:
        import torchao
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

        for name, qconfig in (
            (f"torchao {torchao.__version__} int8 dynamic activations + weights", Int8DynamicActivationInt8WeightConfig()),
            (f"torchao {torchao.__version__} int8 weight-only", Int8WeightOnlyConfig()),
        ):
            models[name] = copy.deepcopy(fp32)
            quantize_(models[name], qconfig)
    results: dict[str, Any] = {}
    for batch in (1, 8):
        for name, model in models.items():
            results[f"{name} @batch {batch}, tokens/s"] = round(tokens_per_s(model, batch, args.new_tokens), 1)
            print(name, batch, results[f"{name} @batch {batch}, tokens/s"], flush=True)
    emit(results, args.out)


if __name__ == "__main__":
    main()
