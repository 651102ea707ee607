"""The Airflow DAG, loaded by Airflow 3 in its own venv (.venv-airflow, `make setup`)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests import backfill

pytestmark = pytest.mark.integration  # imports the DAG in Airflow's own venv (or runs the backfill)

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_PYTHON = ROOT / ".venv-airflow" / "bin" / "python"
CHAIN = [
    "data",
    "tokenizer",
    "shards",
    "train",
    "eval",
    "gate",
    "package",
    "canary",
    "deploy_staff",
    "approve_production",
    "promote",
    "deploy_production",
]


def inspect(tmp_path: Path, **variables: str) -> dict:
    if not AIRFLOW_PYTHON.is_file():
        pytest.fail(f"{AIRFLOW_PYTHON} not found; run `make setup` (it installs Airflow in its own venv)")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        **{f"AIRFLOW_VAR_{k.upper()}": v for k, v in variables.items()},
    }
    out = tmp_path / "dag.json"
    done = subprocess.run(
        [str(AIRFLOW_PYTHON), str(ROOT / "tests" / "airflow" / "inspect_dag.py"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


def test_dag_imports_with_the_intended_graph_locally(tmp_path: Path) -> None:
    dag = inspect(tmp_path, lathe_set="eval.ks=[1]", lathe_deploy_args="--dry-run")
    assert dag["import_errors"] == {} and dag["schedule"] == "@daily"
    tasks = dag["tasks"]
    for upstream, downstream in zip(CHAIN, CHAIN[1:]):
        assert downstream in tasks[upstream]["downstream"], (upstream, downstream)
    assert sorted(tasks["gate"]["downstream"]) == ["gate_failed", "package"]  # a failing candidate stops here
    assert tasks["approve_production"]["type"] == "ApprovalOperator"
    assert {t: tasks[t]["outlets"] for t in ("data", "tokenizer", "shards", "train")} == {
        "data": ["lathe://tiny/data"],
        "tokenizer": ["lathe://tiny/tokenizer"],
        "shards": ["lathe://tiny/shards"],
        "train": ["lathe://tiny/model"],
    }
    assert all(
        t["retries"] >= 2 and t["timeout_s"] for k, t in tasks.items() if k not in ("gate", "gate_failed", "approve_production")
    )
    assert tasks["train"]["command"].endswith(
        "lathe train --config configs/tiny.yaml --set 'eval.ks=[1]' "
        "--set 'run.as_of={{ (data_interval_end or dag_run.run_after).isoformat() }}'"
    )
    assert "deploy --track staff --dry-run" in tasks["deploy_staff"]["command"]


def test_post_training_is_off_by_default_and_chains_between_the_gate_and_package(tmp_path: Path) -> None:
    tasks = inspect(tmp_path, lathe_posttrain="sft-lora dpo", lathe_sweep="true")["tasks"]
    # lathe_sweep: every task passes it (the train task sweeps; the others see the same train stage)
    assert all("--set sweep.enabled=true" in tasks[t]["command"] for t in ("train", "eval", "sft_lora", "package"))
    assert sorted(tasks["gate"]["downstream"]) == ["gate_failed", "sft_lora"]
    assert tasks["sft_lora"]["downstream"] == ["dpo"] and tasks["dpo"]["downstream"] == ["package"]
    assert "lathe finetune --method sft-lora --from train --config configs/tiny.yaml" in tasks["sft_lora"]["command"]
    assert "lathe finetune --method dpo --from sft --config" in tasks["dpo"]["command"]  # the version sft registered
    assert tasks["dpo"]["outlets"] == ["lathe://tiny/dpo"]
    # without the variable (the test above) the gate leads straight to package and no post-training task exists
    assert not {"sft", "sft_lora", "dpo", "dpo_lora"} & set(inspect(tmp_path / "off")["tasks"])


def test_smaller_variants_are_made_and_gated_between_the_gate_and_package(tmp_path: Path) -> None:
    tasks = inspect(tmp_path, lathe_variants="int8 distill")["tasks"]
    assert sorted(tasks["gate"]["downstream"]) == ["gate_failed", "quantize"]
    assert tasks["quantize"]["downstream"] == ["distill"] and tasks["distill"]["downstream"] == ["package"]
    assert "lathe run quantize_eval --config configs/tiny.yaml" in tasks["quantize"]["command"]
    assert "run distill_eval --set distill.teacher=models:/lathe-code@staff" in tasks["distill"]["command"]
    # package and canary serve what passed beside the model
    assert all("--set serve.quantization=int8 --set serve.student=true" in tasks[t]["command"] for t in ("package", "canary"))
    assert tasks["distill"]["outlets"] == ["lathe://tiny/distill"]


def test_same_dag_on_kubernetes_by_configuration(tmp_path: Path) -> None:
    tasks = inspect(tmp_path, lathe_execution="kubernetes", lathe_config="configs/gpu-1b.yaml")["tasks"]
    assert tasks["data"]["type"] == "SparkKubernetesOperator"
    assert {tasks[t]["type"] for t in ("tokenizer", "shards", "train", "eval", "package", "deploy_staff")} == {
        "KubernetesPodOperator"
    }
    assert tasks["train"]["arguments"] == [
        "train",
        "--config",
        "configs/gpu-1b.yaml",
        "--set",
        "run.as_of={{ (data_interval_end or dag_run.run_after).isoformat() }}",
    ]
    assert tasks["eval"]["arguments"][:3] == ["gate", "--xcom", "/airflow/xcom/return.json"]
    assert tasks["train"]["outlets"] == ["lathe://gpu-1b/model"]


@pytest.mark.timeout(2400)  # it waits for the background backfill (started at collection), at most 1,800 s
def test_a_backfill_of_two_intervals_retrains_two_chained_versions() -> None:
    """`make dag-test` (two of its three days): dag.test() over daily intervals of a git source that gains code
    each day, every stage run for real through the CLI on a small profile, each run approved and promoted."""
    from lathe.core.models import ModelRegistry

    run = backfill.start()  # started at collection; this waits for it
    if run is None:
        pytest.fail(f"{AIRFLOW_PYTHON} not found; run `make setup` (it installs Airflow in its own venv)")
    code, output = run.wait()
    assert code == 0, output[-3000:]
    assert "ran raw -> production end to end for 2 intervals" in output
    registry = ModelRegistry("lathe-code", MlflowClient(f"sqlite:///{run.scratch / 'runs' / 'mlflow.db'}"))
    chain = registry.lineage_chain("2")
    assert [link["version"] for link in chain] == ["2", "1"]  # the second interval continued from the first
    tags = [registry.lineage(v) for v in ("1", "2")]
    assert [t["lathe.parent_version"] for t in tags] == ["", "1"]
    assert len({t["lathe.data_snapshot"] for t in tags}) == 2  # one snapshot per interval
    assert len({t["lathe.tokenizer"] for t in tags}) == 1  # one vocabulary, kept across the retrain
    assert registry.find("production") == "2"
