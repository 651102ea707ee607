"""The `quantize` stage: the int8 variant of the model `train` registered, measured against it and registered.

The train stage's fp32 export is quantised (:mod:`lathe.core.quant`: int8 Linear layers, per-channel
weight scales) into a directory the serving engine, the eval stage and Triton load like any model. Its
quality cost is measured where it would show: both models' cross-entropy on the same batches of the
shards' validation split, and the serving engine's greedy completions of both on the eval prompts,
compared token by token. The variant is registered as a new version (``lathe.method=int8``,
``lathe.parent_version`` = the fp32 version) and goes through the gate (`quantize_eval`), whose pass
gives it the ``<track>-int8`` alias that `package` serves as ``<model_name>-int8``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from lathe.core.config import Strict
from lathe.core.errors import InputError
from lathe.core.models import ModelRegistry, verify_registered
from lathe.core.quant import INT8, bytes_on_disk, load_causal_lm, write_int8
from lathe.core.stage import Stage, StageContext, StageResult, json_summary
from lathe.serving.config import QuantizeConfig, ServeConfig
from lathe.training.config import TrainConfig

MODEL_DIR, SUMMARY = "hf_model", "quantize_summary.json"
Prompts = Callable[[Any], list[str]]


class QuantizeSections(Protocol):
    """The config sections the quantize stage reads."""

    profile: str
    serve: ServeConfig
    train: TrainConfig


class QuantizeSection(Strict):
    """What the quantize stage is fingerprinted by."""

    scheme: str
    measure: QuantizeConfig
    prompts: list[str]


def mean_losses(models: dict[str, Any], batches: list[dict[str, Any]]) -> dict[str, float]:
    """Each model's cross-entropy per predicted token over the same batches (HF's shifted labels, -100 skipped)."""
    import torch

    totals = {name: 0.0 for name in models}
    tokens = 0
    with torch.inference_mode():
        for batch in batches:
            n = int((batch["labels"][:, 1:] != -100).sum())
            tokens += n
            for name, model in models.items():
                totals[name] += float(model(input_ids=batch["input_ids"], labels=batch["labels"]).loss) * n
    return {name: total / max(tokens, 1) for name, total in totals.items()}


def validation_batches(val_uris: list[str], cache: Path, pad_id: int, m: QuantizeConfig) -> list[dict[str, Any]]:
    """The first ``m.val_batches`` batches of the validation split, in Streaming's unshuffled order."""
    from lathe.tokenizer.streams import release_filelocks
    from lathe.training.data import build_dataloader, registering_streams

    with registering_streams():
        spec, dataset = build_dataloader([(f"{u}/val", None) for u in val_uris], cache, m.batch_size, False, 0, pad_id, 0)
    batches = []
    for batch in spec.dataloader:
        batches.append(batch)
        if len(batches) == m.val_batches:
            break
    release_filelocks(dataset)
    return batches


def greedy_tokens(model_dir: Path, prompts: list[str], max_tokens: int) -> list[list[int]]:
    """The serving engine's greedy completion of each prompt, as token ids (all prompts in one continuous batch);
    a prompt longer than the context leaves for ``max_tokens`` keeps its end, as the eval stage's generation does."""
    from lathe.serving.engine import Engine, GenRequest

    engine = Engine(model_dir)
    room = engine.context - max_tokens
    if room < 1:
        raise InputError(
            f"serve.quantize.agreement_tokens={max_tokens} leaves no room for a prompt in the model's context of "
            f"{engine.context}; lower it"
        )
    requests = [GenRequest(engine.encode(p)[-room:], max_tokens) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    for event in engine.generate(requests):
        out[event.index] += event.token_ids
    return out


def token_agreement(reference: list[list[int]], other: list[list[int]]) -> dict[str, float]:
    """How far two sets of greedy completions agree, over all prompts' tokens (the longer of each pair counts):

    ``token_agreement``: positions holding the same token; ``prefix_agreement``: tokens before the first
    difference (what a user sees identical); ``exact_match``: the share of prompts completed identically.
    """
    same = prefix = total = exact = 0
    for a, b in zip(reference, other, strict=True):
        total += max(len(a), len(b))
        same += sum(x == y for x, y in zip(a, b))
        common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        prefix += common
        exact += a == b
    return {
        "token_agreement": same / max(total, 1),
        "prefix_agreement": prefix / max(total, 1),
        "exact_match": exact / max(len(reference), 1),
    }


def run_quantize(ctx: StageContext[QuantizeSections], prompts: list[str]) -> StageResult:
    """Quantise the train stage's export, measure loss and greedy agreement against it, register the variant."""
    import mlflow

    from lathe.tokenizer.special import PAD
    from lathe.tokenizer.vocab import load_tokenizer, vocabulary_hash

    cfg = ctx.config.serve
    if cfg.quantization != INT8:
        raise InputError(
            f"serve.quantization is {cfg.quantization!r}: the quantize stage makes the int8 variant (fp8 is vLLM's, "
            "applied on the GPU as `package` configures it); set serve.quantization=int8"
        )
    train = ctx.inputs["train"]
    trained = json.loads(train.path("summary").read_text())
    source, out = train.path("model"), Path(ctx.outputs["model"])
    started = time.perf_counter()
    write_int8(source, out)
    quantize_s = time.perf_counter() - started
    m = cfg.quantize
    batches = validation_batches(
        trained["validation"]["val"], ctx.out_dir / "stream-cache", load_tokenizer(source).token_to_id(PAD), m
    )
    losses = mean_losses({"fp32": load_causal_lm(source), INT8: load_causal_lm(out)}, batches)
    agreement = token_agreement(
        greedy_tokens(source, prompts, m.agreement_tokens), greedy_tokens(out, prompts, m.agreement_tokens)
    )
    summary: dict[str, Any] = {
        "scheme": INT8,
        "parent_version": trained.get("model_version") or "",
        "registered_model": trained.get("registered_model"),
        "final_val_loss": losses[INT8],  # the gate's val_loss
        # the parent on the same batches: when it is production, the gate compares with this (like with like)
        "initial_val_loss": losses["fp32"],
        "fp32_val_loss": losses["fp32"],
        "val_loss_ratio": losses[INT8] / losses["fp32"],
        "val_tokens": sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches),
        **agreement,
        "prompts": len(prompts),
        "tokens_per_prompt": m.agreement_tokens,
        "fp32_bytes": bytes_on_disk(source),
        "int8_bytes": bytes_on_disk(out),
        "quantize_s": quantize_s,
        "model_version": None,
    }
    run = mlflow.active_run()
    if run is not None and summary["registered_model"] and summary["parent_version"]:
        registry = ModelRegistry(summary["registered_model"])
        lineage = {
            **registry.lineage(summary["parent_version"]),
            "lathe.profile": ctx.config.profile,
            "lathe.fingerprint": ctx.fingerprint,
            "lathe.parent_version": summary["parent_version"],
            "lathe.method": INT8,
            "lathe.val_loss": f"{losses[INT8]:.6f}",
            "lathe.tokenizer": vocabulary_hash(out),
        }
        summary["model_version"] = registry.register(out, run.info.run_id, lineage)
    Path(ctx.outputs["summary"]).write_text(json.dumps(summary, indent=2))
    print_quantized(summary, ctx.console)
    return StageResult(
        counts={"prompts": len(prompts), "val_tokens": summary["val_tokens"], "int8_bytes": summary["int8_bytes"]},
        metrics={
            k: float(summary[k])
            for k in ("final_val_loss", "fp32_val_loss", "val_loss_ratio", "token_agreement", "prefix_agreement", "exact_match")
        },
        artifacts=[Path(ctx.outputs["summary"])],
        details=summary,
    )


def print_quantized(summary: dict[str, Any], console: Console) -> None:
    """What int8 costs and saves, on one screen."""
    console.print(
        f"[bold]quantize[/]: int8 weights {summary['int8_bytes'] / 1e6:.1f} MB (fp32 {summary['fp32_bytes'] / 1e6:.1f} MB); "
        f"val loss {summary['fp32_val_loss']:.4f} -> {summary['final_val_loss']:.4f} (x{summary['val_loss_ratio']:.4f})"
    )
    console.print(
        f"greedy tokens agreeing with fp32 on {summary['prompts']} prompts: {summary['token_agreement']:.1%} "
        f"(identical up to the first difference: {summary['prefix_agreement']:.1%}; whole completions: {summary['exact_match']:.0%})"
    )
    if summary.get("model_version"):
        console.print(
            f"registered {summary['registered_model']} version {summary['model_version']} (int8 of v{summary['parent_version']})"
        )


def quantize_headline(manifest: dict[str, Any]) -> str:
    """Loss ratio and agreement."""
    d = manifest["details"]
    return f"int8: val loss x{d['val_loss_ratio']:.3f}, greedy tokens agree {d['token_agreement']:.0%}" + (
        f"; v{d['model_version']} from v{d['parent_version']}" if d.get("model_version") else ""
    )


def quantize_stage(prompts: Prompts) -> Stage[Any]:
    """The quantize stage; ``prompts(cfg)`` are the eval prompts its agreement is measured on (the roof supplies
    them, as serving does not read eval's benchmarks)."""

    def section(cfg: Any) -> QuantizeSection:
        return QuantizeSection(
            scheme=cfg.serve.quantization,
            measure=cfg.serve.quantize,
            prompts=prompts(cfg)[: cfg.serve.quantize.agreement_prompts],
        )

    return Stage(
        name="quantize",
        inputs=("train",),
        section=section,
        run=lambda ctx: run_quantize(ctx, section(ctx.config).prompts),
        outputs={"model": MODEL_DIR, "summary": SUMMARY},
        summarize=json_summary(SUMMARY, print_quantized),
        headline=quantize_headline,
        verify=verify_registered,
        optional=True,
    )
