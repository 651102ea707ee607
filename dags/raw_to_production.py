"""raw_to_production: lathe's daily retrain, one task per stage, each calling the `lathe` CLI.

    data -> tokenizer -> shards -> train -> eval -> gate? -> package -> canary -> deploy_staff
         -> approve_production (a person, in the Airflow UI) -> promote -> deploy_production
                            gate failed -> gate_failed (nothing is deployed)

With post-training on (``lathe_posttrain``), the tuned candidates come between the gate and package:

    gate? -> sft -> dpo -> package -> ...

the first tuning the version train registered, each next one the version the one before registered,
each gated against production in turn, so ``staff`` ends on the last candidate that passed.

With smaller variants on (``lathe_variants``), they are made and gated before package, which serves
each that passed beside the model (``lathe-code-int8``, ``lathe-code-distill``):

    gate? -> [sft -> dpo ->] quantize -> distill -> package -> ...

Where tasks run is configuration, never an edit of this file. Airflow Variables (or their
``AIRFLOW_VAR_*`` environment variables) choose it:

- ``lathe_execution``: ``local`` (default): each task runs the CLI in the project's venv
  (``lathe_home``/.venv/bin/lathe) on the worker; ``kubernetes``: each stage is a
  KubernetesPodOperator in the lathe image (``lathe_image``, namespace ``lathe_namespace``),
  and the Spark data stage is submitted to Spark on Kubernetes as k8s/base/spark's
  SparkApplication.
- ``lathe_config`` (configs/tiny.yaml), ``lathe_set`` (``key=value`` overrides, space separated).
- ``lathe_deploy_args``: extra `lathe deploy` flags (``--dry-run`` where no cluster is reachable).
- ``lathe_approval_timeout_h`` (72): after it, an unanswered approval counts as Reject.
- ``lathe_posttrain`` (empty: off): post-training methods to run after the gate, in order, from
  ``sft``, ``sft-lora``, ``dpo``, ``dpo-lora`` (``lathe finetune`` on the mined and execution-feedback data).
- ``lathe_variants`` (empty: off): smaller served variants from ``int8`` (the train stage's model quantised,
  ``lathe run quantize_eval``; not with post-training, whose last candidate is what `staff` serves) and
  ``distill`` (a student trained from the `staff` model's logits, ``lathe run distill_eval``). A variant that
  fails its own gate is not served; the model still is.
- ``lathe_sweep`` (false): the train task trains the config's sweep candidates, jointly scheduled on the
  devices, and registers the best for the gate (``sweep.enabled=true``, passed to every task so each
  sees the same train stage).

Each stage's output is an Airflow Asset (data snapshot, tokenizer, shards, model), so DAGs
downstream of them (an offline-eval DAG, a data-quality report) run when they change.
The runner's fingerprints make every task idempotent: a retry or a rerun of a finished
stage is a skip. Each run passes its data interval's end as ``run.as_of``: the sources are read
as they were then, so a run is one snapshot and a backfill over past intervals retrains once
per interval, each continuing from the production model the interval before promoted.
"""

from __future__ import annotations

import json
import os
import shlex
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, Asset, task


def setting(name: str, default: str) -> str:
    """An Airflow Variable given through the environment (read at parse time without a DB query)."""
    return os.environ.get(f"AIRFLOW_VAR_{name.upper()}", default)


EXECUTION = setting("lathe_execution", "local")
HOME = setting("lathe_home", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = setting("lathe_config", "configs/tiny.yaml")
SWEEP = setting("lathe_sweep", "false").lower() in ("1", "true", "yes")
VARIANTS = [v for v in setting("lathe_variants", "").replace(",", " ").split() if v]
# Every task passes them: the package and canary tasks serve the variants, the variants' tasks make them.
OVERRIDES = (
    shlex.split(setting("lathe_set", ""))
    + (["sweep.enabled=true"] if SWEEP else [])
    + (["serve.quantization=int8"] if "int8" in VARIANTS else [])
    + (["serve.student=true"] if "distill" in VARIANTS else [])
)
DEPLOY_ARGS = shlex.split(setting("lathe_deploy_args", ""))
IMAGE = setting("lathe_image", "ghcr.io/lathe-ml/lathe:0.1.0")
NAMESPACE = setting("lathe_namespace", "lathe")
PROFILE = os.path.splitext(os.path.basename(CONFIG))[0]
POSTTRAIN = [m for m in setting("lathe_posttrain", "").replace(",", " ").split() if m]
if EXECUTION not in ("local", "kubernetes"):
    raise ValueError(f"lathe_execution={EXECUTION!r}: use local or kubernetes")
if unknown := [m for m in POSTTRAIN if m not in ("sft", "sft-lora", "dpo", "dpo-lora")]:
    raise ValueError(f"lathe_posttrain={unknown}: use sft, sft-lora, dpo or dpo-lora")
if unknown := [v for v in VARIANTS if v not in ("int8", "distill")]:
    raise ValueError(f"lathe_variants={unknown}: use int8 or distill")
if "int8" in VARIANTS and POSTTRAIN:
    raise ValueError(
        "lathe_variants=int8 with lathe_posttrain: the int8 variant is quantised from the train stage's model, "
        "but `staff` ends on the last tuned one; drop one of them"
    )


def asset(stage: str) -> Asset:
    """The Asset a stage's output is, named by profile and stage."""
    return Asset(name=f"lathe-{PROFILE}-{stage}", uri=f"lathe://{PROFILE}/{stage}")


# Each run reads the sources as they were at its data interval's end (a manual run without one: when
# it was triggered), so a run is one snapshot and a backfill replays each interval's state. Every task
# passes it: a task checks its upstream stages against the same snapshot.
AS_OF = "run.as_of={{ (data_interval_end or dag_run.run_after).isoformat() }}"


def lathe_args(*args: str) -> list[str]:
    """A `lathe` command line with the DAG's config, overrides and the run's data interval."""
    sets = [item for o in [*OVERRIDES, AS_OF] for item in ("--set", o)]
    return [*args, "--config", CONFIG, *sets]


def stage_task(task_id: str, args: list[str], outlets: list[Asset] | None = None, timeout_h: float = 4, **kwargs: Any) -> Any:
    """One CLI call, as a local BashOperator or a pod in the lathe image."""
    common = dict(task_id=task_id, outlets=outlets or [], execution_timeout=timedelta(hours=timeout_h), **kwargs)
    if EXECUTION == "local":
        command = " ".join(shlex.quote(a) for a in [os.path.join(HOME, ".venv", "bin", "lathe"), *args])
        return BashOperator(bash_command=f"cd {shlex.quote(HOME)} && {command}", **common)
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    secrets = [
        k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=n, optional=True))
        for n in ("lathe-object-store", "lathe-wandb", "lathe-hf")
    ]
    return KubernetesPodOperator(
        name=f"lathe-{task_id.replace('_', '-')}",
        namespace=NAMESPACE,
        image=IMAGE,
        cmds=["lathe"],
        arguments=args,
        env_from=[k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name="lathe-config")), *secrets],
        service_account_name="lathe",
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        **common,
    )


def data_task() -> Any:
    """The Spark stage: local Spark in the venv, or a SparkApplication on the cluster."""
    if EXECUTION == "local":
        return stage_task("data", lathe_args("run", "data"), [asset("data")], timeout_h=6)
    from airflow.providers.cncf.kubernetes.operators.spark_kubernetes import SparkKubernetesOperator

    return SparkKubernetesOperator(
        task_id="data",
        namespace=NAMESPACE,
        application_file="k8s/base/spark/sparkapplication.yaml",
        outlets=[asset("data")],
        execution_timeout=timedelta(hours=6),
    )


with DAG(
    dag_id="raw_to_production",
    description="Raw code -> clean data -> tokenizer -> shards -> model -> HumanEval gate -> Triton on Kubernetes",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two retrains would race for the registry aliases
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(hours=1),
    },
    tags=["lathe", PROFILE, EXECUTION],
    doc_md=__doc__,
) as dag:
    data = data_task()
    tokenizer = stage_task("tokenizer", lathe_args("run", "tokenizer"), [asset("tokenizer")], timeout_h=2)
    shards = stage_task("shards", lathe_args("run", "shards"), [asset("shards")], timeout_h=4)
    train = stage_task("train", lathe_args("train"), [asset("model")], timeout_h=20, retries=3)
    # `lathe gate` runs the eval stage and ends with the gate's decision as JSON: the task's
    # XCom (a BashOperator's last line; a pod's /airflow/xcom/return.json)
    xcom = [] if EXECUTION == "local" else ["--xcom", "/airflow/xcom/return.json"]
    evaluate = stage_task("eval", lathe_args("gate", *xcom), [], timeout_h=3, do_xcom_push=True)

    # Post-training (off unless lathe_posttrain names methods): the first tunes the version train registered,
    # each next one the version the one before registered (pinned versions: a retry or an unchanged day
    # tunes the same model, so its stage is a skip); each goes through its own gate, and `lathe finetune`
    # ends with that gate's decision and never fails on it.
    starts = ["train", *(m.split("-")[0] for m in POSTTRAIN)]
    tuned = [
        stage_task(
            m.replace("-", "_"), lathe_args("finetune", "--method", m, "--from", start), [asset(m)], timeout_h=6, retries=3
        )
        for m, start in zip(POSTTRAIN, starts)
    ]
    # Smaller variants (off unless lathe_variants names them): each made from what `staff` holds now and gated on
    # its own alias (`staff-int8`, `staff-distill`); `lathe run` never fails on a variant's gate.
    variant_runs = {
        "int8": ("quantize", lathe_args("run", "quantize_eval"), 2),
        "distill": ("distill", lathe_args("run", "distill_eval", "--set", "distill.teacher=models:/lathe-code@staff"), 12),
    }
    variants = [
        stage_task(name, args, [asset(name)], timeout_h=hours, retries=3)
        for name, args, hours in (variant_runs[v] for v in VARIANTS)
    ]
    after_gate = (tuned or variants)[0].task_id if tuned or variants else "package"  # the task the gate's pass leads to

    @task.branch(task_id="gate")
    def gate(decision: str | dict[str, Any]) -> str:
        """Deploy (or first post-train) only a candidate the gate passed."""
        verdict = json.loads(decision) if isinstance(decision, str) else decision
        print(f"gate for version {verdict['version']}: {'passed' if verdict['passed'] else 'failed'} ({verdict['reason']})")
        return after_gate if verdict["passed"] else "gate_failed"

    gate_failed = EmptyOperator(task_id="gate_failed")
    package = stage_task("package", lathe_args("run", "package"), timeout_h=1)
    canary = stage_task("canary", lathe_args("run", "canary"), timeout_h=1)
    deploy_staff = stage_task("deploy_staff", lathe_args("deploy", "--track", "staff", *DEPLOY_ARGS), timeout_h=1)
    approve = ApprovalOperator(
        task_id="approve_production",
        subject=f"lathe: promote the staff model of {PROFILE} to production?",
        body="Staff have used the `staff` version since deploy_staff. Approve to move `production` to it and roll it out.",
        defaults="Reject",  # nobody answered: nothing reaches production
        response_timeout=timedelta(hours=float(setting("lathe_approval_timeout_h", "72"))),
    )
    promote = stage_task("promote", lathe_args("promote"), timeout_h=0.5)
    deploy_production = stage_task("deploy_production", lathe_args("deploy", "--track", "production", *DEPLOY_ARGS), timeout_h=1)

    data >> tokenizer >> shards >> train >> evaluate
    decision = gate(evaluate.output)
    decision >> [(tuned or variants or [package])[0], gate_failed]
    chained = [*tuned, *variants]
    for before, after in zip(chained, [*chained[1:], package]):
        before >> after
    package >> canary >> deploy_staff >> approve >> promote >> deploy_production
