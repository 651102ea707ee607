"""Int8 variants of an exported model: write them, and load any model directory, quantised or not.

An int8 directory is the fp32 checkpoint's ``config.json`` and tokenizer beside ``int8_weights.pt``
(the state dict of the model after PyTorch's dynamic quantisation: every ``nn.Linear`` holds int8
weights, one scale per output channel, and quantises its input per batch, so the matrix products
run as int8 GEMMs through fbgemm / oneDNN) and ``quantization.json`` naming the scheme. The
embedding stays fp32 (a lookup, not a product). Measured here against torchao's int8 configs
(benchmarks/README.md), PyTorch's own dynamic quantisation was the faster on this CPU.

This module depends on torch, transformers and the standard library only, because it is copied
into the Triton model repository (as ``lathe_quant.py``) beside the engine that loads with it.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

QUANTIZATION_FILE = "quantization.json"
INT8_WEIGHTS = "int8_weights.pt"
INT8 = "int8"
# Files of an HF checkpoint that are not its weights: an int8 directory keeps them as they are.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def quantization_of(model_dir: str | Path) -> str:
    """The scheme a model directory holds: ``none`` (fp32 safetensors) or ``int8``."""
    path = Path(model_dir) / QUANTIZATION_FILE
    return json.loads(path.read_text())["scheme"] if path.is_file() else "none"


def quantize_int8(model: Any) -> Any:
    """``model`` with every ``nn.Linear`` dynamically quantised to int8 (per-channel weight scales), in eval mode."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao; it is what runs fastest here
        warnings.simplefilter("ignore")
        return quantize_dynamic(model.eval(), {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def write_int8(source: str | Path, dest: str | Path) -> Path:
    """Quantise the fp32 checkpoint in ``source`` and write its int8 directory to ``dest`` (replaced if there)."""
    import torch
    from transformers import AutoModelForCausalLM

    source, dest = Path(source), Path(dest)
    if quantization_of(source) != "none":
        raise ValueError(f"{source} is already quantised ({quantization_of(source)}); quantise the fp32 export")
    model = quantize_int8(AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32))
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for f in source.iterdir():
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(f, dest / f.name)
    torch.save(model.state_dict(), dest / INT8_WEIGHTS)
    info = {
        "scheme": INT8,
        "method": "torch.ao dynamic quantisation",
        "modules": "nn.Linear",
        "weights": "qint8, symmetric, per output channel",
        "activations": "quantised per batch at run time",
        "engine": torch.backends.quantized.engine,
    }
    (dest / QUANTIZATION_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return dest


def load_causal_lm(model_dir: str | Path, device: str = "cpu") -> Any:
    """The causal LM in ``model_dir``, in eval mode: an fp32 export as is, an int8 directory rebuilt and quantised."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    scheme = quantization_of(model_dir)
    if scheme == "none":
        # typed as the nn.Module it is: transformers' `to` (functools.wraps of Module.to) loses its self binding for mypy
        fp32: torch.nn.Module = AutoModelForCausalLM.from_pretrained(str(model_dir))
        return fp32.to(device).eval()
    if scheme != INT8:
        raise ValueError(f"{model_dir}: quantization scheme {scheme!r} is not one this engine loads (int8)")
    if not device.startswith("cpu"):
        raise ValueError(
            f"{model_dir} holds int8 weights for the CPU (fbgemm / oneDNN kernels); serve it on CPU instances "
            "(GPUs serve the fp8 vLLM variant)"
        )
    model = quantize_int8(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_dir))))
    with warnings.catch_warnings():  # quantised tensors are rebuilt through TypedStorage, which torch calls deprecated
        warnings.simplefilter("ignore")
        model.load_state_dict(torch.load(Path(model_dir) / INT8_WEIGHTS, weights_only=True))
    return model.eval()


def bytes_on_disk(model_dir: str | Path) -> int:
    """Bytes of a model's weight files (what a variant saves, tokenizer and config aside)."""
    return sum(f.stat().st_size for f in Path(model_dir).iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
