"""The `sft` and `dpo` stages: tune a registered model, export it, register it with its lineage.

Both start from a registered version (``init_from``, the production model by default), whose
tokenizer and architecture the tuned model keeps. The driver splits the examples into train
and validation by a stable hash of their id, encodes them with that tokenizer (loss on the
answers only; too long: dropped and counted; a row with a ``suffix``, as the serving
gateway exports fill-in-the-middle feedback, gets the FIM prompt the served model is
asked with) and writes them as MDS; for DPO it first
computes the starting model's log-probabilities of both answers, stored beside each pair, so
training holds one model. Composer then trains on the same trainer as pretraining (one
process, or ``nproc`` ranks under its launcher). The result is registered as a new version
tagged ``lathe.parent_version`` and ``lathe.method`` (``sft``, ``sft-lora``, ``dpo``,
``dpo-lora``); the gate stages (`sft_eval`, `dpo_eval`) decide whether it reaches staff.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from lathe.core.errors import InputError
from lathe.core.fim import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, FimIds
from lathe.core.models import ModelRegistry, current_version, model_to_tune, pinned, verify_registered
from lathe.core.stage import Stage, StageContext, StageResult, Upstream, json_summary
from lathe.tokenizer.special import EOS, PAD
from lathe.tokenizer.vocab import load_tokenizer, vocabulary_hash
from lathe.training.config import DPOConfig, FinetuneConfig, SFTConfig
from lathe.training.job import METRICS, MODEL_DIR, SUMMARY, FinetuneJob, last_metric
from lathe.training.launcher import launch

EXAMPLES = "examples"  # the encoded train/ and val/ splits (MDS) under the stage folder
SPLITS = ("train", "val")


class PosttrainSections(Protocol):
    """The config sections the post-training stages read."""

    profile: str
    sft: SFTConfig
    dpo: DPOConfig


def is_val(key: str, fraction: float) -> bool:
    """Whether the example with id ``key`` is held out: a stable hash, so a rerun holds out the same ones."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64 < fraction


def by_split(
    rows: list[dict[str, str]], fraction: float, key: Callable[[dict[str, str]], str]
) -> dict[str, list[dict[str, str]]]:
    """Rows into train and val by :func:`is_val` of ``key(row)``."""
    split: dict[str, list[dict[str, str]]] = {"train": [], "val": []}
    for row in rows:
        split["val" if is_val(key(row), fraction) else "train"].append(row)
    return split


def by_prompt(row: dict[str, str]) -> str:
    """A preference pair's split key: its prompt, so pairs of one prompt (execution feedback makes several)
    are all held out or all trained on, and a held-out prompt was never seen."""
    return row["prompt"] + "\x00" + (row.get("suffix") or "")


def context_length(model_dir: Path, tc: FinetuneConfig, setting: str) -> int:
    """The longest example: ``max_seq_len`` when set (within the model's context), else the model's context."""
    context = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
    if tc.max_seq_len and tc.max_seq_len > context:
        raise InputError(
            f"{setting}.max_seq_len={tc.max_seq_len} exceeds the context of the model it tunes ({context} tokens); "
            f"lower it or unset it"
        )
    return tc.max_seq_len or context


def read_rows(path: Path, columns: list[str]) -> list[dict[str, str]]:
    """Rows of a parquet dataset an upstream stage wrote."""
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=columns).to_pylist()


def tokenize(tok: Any) -> Callable[[list[str]], list[list[int]]]:
    """Texts -> token ids with ``tok``, no special tokens added (the encoders add EOS themselves)."""
    return lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def fim_ids(tok: Any) -> FimIds:
    """The tokenizer's FIM ids: prompts with a suffix are framed as the served model is asked."""
    return FimIds(tok.token_to_id(FIM_PREFIX), tok.token_to_id(FIM_MIDDLE), tok.token_to_id(FIM_SUFFIX))


def write_sft_examples(rows: list[dict[str, str]], base: Path, tc: FinetuneConfig, out: Path, setting: str) -> dict[str, int]:
    """Encode the pairs of each split and write them as MDS under ``out``; the counts per split and drops."""
    from lathe.training.posttrain.sft_data import encode_pairs, write_examples

    tok = load_tokenizer(base)
    counts: Counter[str] = Counter()
    for split, part in by_split(rows, tc.val_fraction, lambda row: row["pair_id"]).items():
        examples, drops = encode_pairs(
            part, tokenize(tok), tok.token_to_id(EOS), context_length(base, tc, setting), fim=fim_ids(tok)
        )
        counts[split] = write_examples(examples, str(out / split))
        counts.update({f"dropped.{k}": v for k, v in drops.items()})
    return dict(counts)


def write_dpo_examples(rows: list[dict[str, str]], base: Path, tc: FinetuneConfig, out: Path, setting: str) -> dict[str, int]:
    """Encode each split's pairs, add the starting model's log-probabilities of both answers, write MDS."""
    from transformers import AutoModelForCausalLM

    from lathe.training.posttrain.dpo import encode_preference, reference_logps, write_preferences
    from lathe.training.posttrain.sft_data import encode_rows

    tok = load_tokenizer(base)
    eos, max_len = tok.token_to_id(EOS), context_length(base, tc, setting)
    reference = AutoModelForCausalLM.from_pretrained(str(base))
    counts: Counter[str] = Counter()
    for split, part in by_split(rows, tc.val_fraction, by_prompt).items():
        samples = []
        for prompt, (chosen, rejected) in encode_rows(part, ("chosen", "rejected"), tokenize(tok), fim_ids(tok)):
            sample = encode_preference(prompt, chosen, rejected, eos, max_len)
            if sample is None:
                counts["dropped.too_long"] += 1
            else:
                samples.append(sample)
        reference_logps(reference, samples, tok.token_to_id(PAD))
        counts[split] = write_preferences(samples, str(out / split))
    return dict(counts)


def tune(ctx: StageContext[PosttrainSections], method: str, examples: Upstream, rows: list[dict[str, str]]) -> StageResult:
    """Write the examples, train with Composer, export and register: what the `sft` and `dpo` stages share."""
    import mlflow

    tc: FinetuneConfig = getattr(ctx.config, method)
    base = model_to_tune(pinned(tc.init_from, ctx.observed.get("init_from", "")), ctx.out_dir / "init", f"{method}.init_from")
    ctx.console.print(
        f"{method}: tuning {base.ref}"
        + (f" (version {base.version})" if base.version else "")
        + (f" with LoRA rank {tc.lora.rank}" if tc.lora else " (every weight)")
    )
    write = write_sft_examples if method == "sft" else write_dpo_examples
    # Written again on a resumed run: the same rows give the same shards, so the checkpoint's place in them holds.
    shutil.rmtree(ctx.out_dir / EXAMPLES, ignore_errors=True)
    counts = write(rows, base.path, tc, ctx.out_dir / EXAMPLES, method)
    counts["input"] = len(rows)
    if not counts.get("train") or not counts.get("val"):
        raise InputError(
            f"{method}: {counts.get('train', 0)} training and {counts.get('val', 0)} validation examples "
            f"from {len(rows)} rows; give more data or change {method}.val_fraction / {method}.max_seq_len"
        )
    if counts["train"] + counts["val"] + sum(v for k, v in counts.items() if k.startswith("dropped.")) != len(rows):
        raise InputError(f"{method}: examples lost while encoding ({counts}); this is a bug")
    run = mlflow.active_run()
    job = FinetuneJob(
        method=method,
        tune=tc,
        beta=getattr(tc, "beta", 0.1),
        label_smoothing=getattr(tc, "label_smoothing", 0.0),
        sft_weight=getattr(tc, "sft_weight", 0.0),
        base=str(base.path),
        base_ref=base.ref,
        parent_version=base.version,
        data=str(ctx.out_dir / EXAMPLES),
        seq_len=context_length(base.path, tc, method),
        out_dir=str(ctx.out_dir.resolve()),
        run_name=f"{ctx.config.profile}-{method}-{ctx.fingerprint}",
        mlflow_uri=mlflow.get_tracking_uri(),
        mlflow_run_id=run.info.run_id if run else None,
    )
    if tc.nproc == 1:
        from lathe.training.posttrain.finetune import run_finetune  # torch and Composer: only when training

        run_finetune(job)
    else:
        launch(job, tc.nproc, ctx.out_dir)
    summary_file, metrics_file = Path(ctx.outputs["summary"]), Path(ctx.outputs["metrics"])
    summary = json.loads(summary_file.read_text())
    summary.update(
        examples=counts, registered_model=tc.registered_model, tokens_per_s=last_metric(metrics_file, "throughput/tokens_per_sec")
    )
    if run is not None:
        lineage = {
            "lathe.profile": ctx.config.profile,
            "lathe.fingerprint": ctx.fingerprint,
            "lathe.parent_version": base.version,
            "lathe.data_snapshot": str(examples.details.get("data_snapshot") or ""),
            "lathe.tokenizer": vocabulary_hash(base.path),
            "lathe.method": summary["method"],
            "lathe.tokens": str(summary["tokens"]),
            "lathe.val_loss": "" if summary.get("final_val_loss") is None else f"{summary['final_val_loss']:.6f}",
        }
        summary["model_version"] = ModelRegistry(tc.registered_model).register(
            Path(ctx.outputs["model"]), run.info.run_id, lineage
        )
    summary_file.write_text(json.dumps(summary, indent=2))
    print_tuned(summary, ctx.console)
    metrics = {k: float(v) for k, v in summary.items() if k.startswith(("initial_", "final_")) and v is not None}
    return StageResult(
        counts={**{f"examples.{k}": v for k, v in counts.items()}, "batches": summary["batches"], "tokens": summary["tokens"]},
        metrics={
            **metrics,
            "trainable_share": summary["trainable_share"],
            **({"tokens_per_s": summary["tokens_per_s"]} if summary.get("tokens_per_s") else {}),
        },
        artifacts=[p for p in (metrics_file, summary_file) if p.is_file()],
        details=summary,
    )


def run_sft(ctx: StageContext[PosttrainSections]) -> StageResult:
    """Supervised fine-tuning on the pairs stage's (prompt, response) pairs."""
    pairs = ctx.inputs["pairs"]
    return tune(ctx, "sft", pairs, read_rows(pairs.path("sft"), ["pair_id", "prompt", "response", "suffix"]))


def run_dpo(ctx: StageContext[PosttrainSections]) -> StageResult:
    """DPO on the preferences stage's (prompt, chosen, rejected) pairs."""
    prefs = ctx.inputs["preferences"]
    return tune(ctx, "dpo", prefs, read_rows(prefs.path("pairs"), ["pair_id", "prompt", "chosen", "rejected", "suffix"]))


def print_tuned(summary: dict[str, Any], console: Console) -> None:
    """What post-training changed, on one screen."""
    ex = summary["examples"]
    console.print(
        f"[bold]{summary['method']}[/]: {ex['train']} training and {ex['val']} held-out examples; "
        f"{summary['batches']} batches, {summary['tokens']:,} tokens; {summary['trainable_share']:.2%} of "
        f"{summary['parameters'] / 1e6:.2f}M parameters trained"
    )
    for key in ("val_loss", "preference_accuracy", "reward_margin"):
        if summary.get(f"final_{key}") is not None:
            before = summary.get(f"initial_{key}")
            console.print(
                f"held-out {key.replace('_', ' ')} {'' if before is None else f'{before:.4f} -> '}{summary[f'final_{key}']:.4f}"
            )
    if summary.get("model_version"):
        console.print(
            f"registered {summary['registered_model']} version {summary['model_version']} "
            f"(parent {summary['parent_version'] or 'none'}, method {summary['method']})"
        )


def tuned_headline(manifest: dict[str, Any]) -> str:
    """Method, held-out figures before and after, and the version registered."""
    d = manifest["details"]
    parts = [d["method"]]
    for key, name in (("val_loss", "val loss"), ("preference_accuracy", "pref acc")):
        if d.get(f"final_{key}") is not None:
            before = d.get(f"initial_{key}")
            parts.append(f"{name} {'' if before is None else f'{before:.3f} -> '}{d[f'final_{key}']:.3f}")
    return ", ".join(parts) + (f"; v{d['model_version']} from v{d['parent_version']}" if d.get("model_version") else "")


def observe_start(method: str) -> Callable[[Any], dict[str, str]]:
    """The version ``<method>.init_from`` names now: when production moves, the stage reruns."""
    return lambda cfg: {"init_from": current_version(getattr(cfg, method).init_from)}


def posttrain_stage(method: str, examples: str, run: Callable[[StageContext[Any]], StageResult]) -> Stage[Any]:
    """The stage of one post-training method, reading its examples from stage ``examples``."""
    return Stage(
        name=method,
        inputs=(examples,),
        section=lambda cfg: getattr(cfg, method),
        run=run,
        outputs={"model": MODEL_DIR, "summary": SUMMARY, "metrics": METRICS, "examples": EXAMPLES},
        summarize=json_summary(SUMMARY, print_tuned),
        headline=tuned_headline,
        observe=observe_start(method),
        verify=verify_registered,
        resumable=True,
        optional=True,
    )


SFT = posttrain_stage("sft", "pairs", run_sft)
DPO = posttrain_stage("dpo", "preferences", run_dpo)
