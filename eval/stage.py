"""The `eval` stage: generate completions with the trained model for each benchmark (HumanEval and,
per ``eval.benchmarks``, its translations into other languages), score them in the sandbox, write the
report (per language), and run the promotion gate. Post-training candidates go through
the same stage under their own names (`sft_eval`, `dpo_eval`): every registered version is gated alike."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Protocol

from lathe.core.models import PRODUCTION, STAFF, ModelRegistry, resolve_model, variant_alias
from lathe.core.stage import Stage, StageContext, StageResult, Upstream, json_summary
from lathe.core.tracking import figure_name, mlflow_key
from lathe.eval.config import EvalConfig
from lathe.eval.evaluate import evaluate_model, print_eval, report_figures, samples_file, write_report
from lathe.eval.gate import Paired, decide
from lathe.eval.held_out import HeldOutDocument, held_out_documents
from lathe.eval.infilling import SINGLE_LINE, InfillingTask
from lathe.eval.quality import (
    floor_figures,
    infilling_floors,
    infilling_subset,
    line_floor,
    line_subset,
    measure_quality,
    paired_figures,
    paired_summary,
    quality_figures,
    quality_summary,
)


class EvalSections(Protocol):
    """The config sections the eval stage reads."""

    eval: EvalConfig


# The gate's loss figures and the train summary fields they come from (before training: the parent's).
LOSS_FIGURES = {
    "val_loss": ("initial_val_loss", "final_val_loss"),
    "replay_val_loss": ("initial_replay_val_loss", "final_replay_val_loss"),
}


def production_on_this_split(trained: dict[str, Any], registry: ModelRegistry) -> dict[str, float] | None:
    """Production's validation losses on this candidate's validation splits (new data, earlier data), when
    the candidate continued from production: its losses before the first step are exactly those."""
    parent = trained.get("parent_version")
    if not parent or registry.find(PRODUCTION) != parent:
        return None
    here = {k: float(trained[before]) for k, (before, _) in LOSS_FIGURES.items() if trained.get(before) is not None}
    return here or None


def candidate(inputs: dict[str, Upstream]) -> Upstream:
    """The stage that trained and registered the candidate: an eval stage's only input."""
    (trainer,) = inputs.values()
    return trainer


def measure_production(
    name: str,
    production: str,
    tasks: list[InfillingTask],
    documents: list[HeldOutDocument],
    candidate_quality: dict[str, Any],
    ctx: StageContext[EvalSections],
) -> tuple[dict[str, Any], dict[str, Paired]]:
    """Production's infilling, bits per byte and line completion on the candidate's tasks and documents, and the
    gate's pairs of them."""
    cfg = ctx.config.eval
    # a temporary cache: production's weights need not stay in the candidate's run folder
    with tempfile.TemporaryDirectory(prefix="lathe-production-") as cache:
        model_dir = resolve_model(f"models:/{name}/{production}", Path(cache))
        ctx.console.print(f"measuring production (version {production}) on the same infilling tasks and documents")
        theirs = measure_quality(model_dir, tasks, documents, cfg)
    return theirs, paired_figures(candidate_quality, theirs, cfg.gate)


def run_eval(ctx: StageContext[EvalSections], alias: str = STAFF) -> StageResult:
    """Generate, score, report, gate (a pass moves ``alias``)."""
    cfg = ctx.config.eval
    train = candidate(ctx.inputs)
    trained = json.loads(train.path("summary").read_text())
    report = evaluate_model(str(train.path("model")), cfg, ctx.out_dir)
    figures = report_figures(report)
    figures.update({k: float(trained[after]) for k, (_, after) in LOSS_FIGURES.items() if trained.get(after) is not None})
    # The product's own task and bits per byte, on the same items production is measured on below.
    model_dir = resolve_model(str(train.path("model")), ctx.out_dir / "model")  # as evaluate_model resolved it
    tasks = infilling_subset(cfg) if cfg.infilling.enabled else []
    documents, no_documents = (
        held_out_documents(trained, model_dir, cfg.bits_per_byte)
        if cfg.bits_per_byte.enabled or cfg.line_completion.enabled
        else ([], None)
    )
    quality = measure_quality(model_dir, tasks, documents, cfg)
    floors: dict[str, Any] = {}
    if tasks:
        measured = quality["infilling"]
        if "skipped" not in measured:
            floors = infilling_floors(tasks, cfg)
        report["infilling"] = {
            "set": SINGLE_LINE,
            "tasks": len(tasks),
            "seed": cfg.infilling.seed,
            "max_new_tokens": cfg.infilling.max_new_tokens,
            **({"skipped": measured["skipped"]} if "skipped" in measured else {"modes": measured, "floors": floors}),
        }
    if cfg.bits_per_byte.enabled:
        report["bits_per_byte"] = quality.get("bits_per_byte") or {"skipped": no_documents}
    if "line_completion" in quality:
        lines = line_subset(documents, cfg)
        report["line_completion"] = {**quality["line_completion"], "seed": cfg.line_completion.seed, "floor": line_floor(lines)}
    figures.update(quality_figures(quality))
    name, version = trained.get("registered_model"), trained.get("model_version")
    if name and version:
        registry = ModelRegistry(name)
        here = production_on_this_split(trained, registry)
        comparable = not (trained.get("method") and here is None)
        if not comparable:
            # A tuned model's loss is on its own held-out pairs, and production was not measured on them (the
            # run started from another version, or resumed): its recorded loss means something else.
            report["held_out_loss"] = figures.pop("val_loss", None)
        production, theirs = registry.find(PRODUCTION), None
        paired: dict[str, Paired] = {}
        # production's middles are needed only where the candidate's were measured (its vocabulary has FIM sentinels)
        pairable = tasks if "modes" in report.get("infilling", {}) else []
        if production is not None and production != str(version) and (pairable or documents):
            theirs, paired = measure_production(name, production, pairable, documents, quality, ctx)
            # production's figures measured now, on the same tasks and bytes, replace those recorded when it was a candidate
            here = {**(here or {}), **quality_figures(theirs)}
        decision = decide(registry, str(version), figures, cfg.gate, here, compare_loss=comparable, alias=alias, paired=paired)
        report["gate"] = {
            "passed": decision.passed,
            "reason": decision.reason,
            "candidate_version": version,
            "alias": alias,
            "production_version": decision.production_version,
            "candidate": decision.candidate,
            "production": decision.production,
            "production_quality": None if theirs is None else quality_summary(theirs),
            "paired": paired_summary(paired, cfg.gate),
        }
    artifacts = write_report(report, ctx.out_dir)
    print_eval(report, ctx.console)
    return StageResult(
        counts={
            "problems": report["problems"],
            "samples": report["samples"],
            "passed": sum(r["passed"] for r in report["results"]),
        },
        metrics={mlflow_key(k): float(v) for k, v in (figures | floor_figures(floors)).items()},
        artifacts=[
            *(
                samples_file(ctx.out_dir, name, i == 0)
                for i, (name, b) in enumerate(report["benchmarks"].items())
                if "skipped" not in b
            ),
            *artifacts,
        ],
        details={"gate": report.get("gate")},
    )


def verify_gated(manifest: dict[str, Any], inputs: dict[str, Upstream]) -> str | None:
    """A finished eval counts only for the version train registered now (train reran: gate the new one)."""
    gate = (manifest.get("details") or {}).get("gate") or {}
    current = candidate(inputs).details.get("model_version")
    if gate and current and str(gate.get("candidate_version")) != str(current):
        return f"it gated version {gate.get('candidate_version')}, but {candidate(inputs).stage} registered version {current}"
    return None


def eval_headline(manifest: dict[str, Any]) -> str:
    """pass@k, bits per byte beside gzip's, infilling and line completion edit similarity beside their floors, and the
    gate's verdict."""
    metrics = manifest["metrics"]
    parts = [", ".join(f"{figure_name(k)} {v:.3f}" for k, v in metrics.items() if k.startswith("pass"))]
    if "bits_per_byte" in metrics:
        parts.append(f"bits/byte {metrics['bits_per_byte']:.2f} (gzip {metrics['gzip_bits_per_byte']:.2f})")
    floor = metrics.get("infill/floor/previous-line/edit_similarity")
    modes = [k for k in metrics if k.startswith("infill/") and k.endswith("/edit_similarity") and "/floor/" not in k]
    if modes and floor is not None:
        similarity = ", ".join(f"{k.split('/')[1]} {metrics[k]:.1f}" for k in modes)
        parts.append(f"infill edit sim {similarity} (floor {floor:.1f})")
    if "line/edit_similarity" in metrics:
        parts.append(f"line edit sim {metrics['line/edit_similarity']:.1f}")
    gate = (manifest.get("details") or {}).get("gate") or {}
    parts.append(
        f"gate {'passed' if gate.get('passed') else 'FAILED'} for v{gate.get('candidate_version')}" if gate else "no gate"
    )
    return "; ".join(p for p in parts if p)


def gate_stage(name: str, trainer: str, optional: bool = False, alias: str = STAFF) -> Stage[Any]:
    """The eval stage (HumanEval in the sandbox, then the gate) of the candidate ``trainer`` registers; a pass
    moves ``alias`` (a variant's own, so that it is served beside the model rather than instead of it)."""
    return Stage(
        name=name,
        inputs=(trainer,),
        section=lambda cfg: cfg.eval,
        run=lambda ctx: run_eval(ctx, alias),
        # 2: results.json reports every benchmark of eval.benchmarks (per language);
        # 3: infilling (with floors) and bits per byte measured, and paired with production's for the gate;
        # 4: held-out documents as the shards stage kept them, bits per byte per language, line completion
        version="4",
        outputs={"report": "report.md", "results": "results.json", "samples": "samples.jsonl"},
        summarize=json_summary("results.json", print_eval),
        headline=eval_headline,
        verify=verify_gated,
        optional=optional,
    )


EVAL = gate_stage("eval", "train")
SFT_EVAL = gate_stage("sft_eval", "sft", optional=True)
DPO_EVAL = gate_stage("dpo_eval", "dpo", optional=True)
QUANTIZE_EVAL = gate_stage("quantize_eval", "quantize", optional=True, alias=variant_alias(STAFF, "int8"))
DISTILL_EVAL = gate_stage("distill_eval", "distill", optional=True, alias=variant_alias(STAFF, "distill"))
