"""`make dag-test`: a backfill of raw_to_production over three daily intervals with `dag.test()`
(in .venv-airflow; LATHE_DAG_TEST_DAYS=2 backfills the first two, as the test suite does).

The source is a git repository that gains code every day (commits dated inside each
interval). Each interval's run reads it as of its data interval's end, and runs every stage
for real through the CLI on a small profile in a scratch runs dir; deploys are dry runs (no
cluster here). `dag.test()` parks the production approval until someone answers, so a thread
answers "Approve" the way the Airflow UI's Required Actions page does (the same database
writes as the HITL REST endpoint), and promote and deploy_production then run: the next
interval continues from the version this one promoted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# tests/backfill.py names the folder and removes it itself; `make dag-test` gets one of its own, removed on success
OWN_SCRATCH = not os.environ.get("LATHE_DAG_TEST_DIR")
scratch = Path(os.environ.get("LATHE_DAG_TEST_DIR") or tempfile.mkdtemp(prefix="lathe-dag-test-"))
SOURCE = scratch / "src"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
# What lands in the repository on each day of the backfill (commits at noon UTC).
DAYS = [
    (datetime(2026, 1, 1, tzinfo=UTC), ["email", "importlib", "concurrent", "json"]),
    (datetime(2026, 1, 2, tzinfo=UTC), ["http", "xml"]),
    (datetime(2026, 1, 3, tzinfo=UTC), ["urllib", "logging"]),
][: int(os.environ.get("LATHE_DAG_TEST_DAYS", "3"))]
SMALL = [
    f"run.runs_dir={scratch / 'runs'}",
    f"data.sources=[{{kind: tree, paths: [{SOURCE}], repo: stdlib}}]",
    "spark.shuffle_partitions=2",
    "data.partitions=2",
    "shards.partitions=2",
    "tokenizer.vocab_size=512",
    "tokenizer.ablation_vocab_sizes=[]",
    "tokenizer.heldout_fraction=0.1",
    "tokenizer.reserved_sentinels=4",
    "shards.seq_len=128",
    "shards.val_fraction=0.1",
    "train.model={d_model: 64, n_layers: 2, n_heads: 2, max_seq_len: 128}",
    "train.max_duration=8ba",
    "train.warmup=2ba",
    "train.eval_interval=8ba",
    "train.save_interval=8ba",
    "train.global_train_batch_size=4",
    "train.device_train_microbatch_size=4",
    "train.wandb.enabled=false",
    "eval.ks=[1]",
    "eval.generation={limit: 2, n: 1, max_new_tokens: 8}",
    "serve.canary_load={clients: 2, seconds: 2, max_tokens: 4}",
    # the backfill is about the chain of versions, so the gate lets a tiny model's noise through
    "eval.gate={max_val_loss_increase: 10, max_replay_val_loss_increase: 10, max_infill_pass_drop: 1, "
    "max_infill_edit_similarity_drop: 100, max_bits_per_byte_increase: 10}",
    "eval.infilling={tasks: 8, max_new_tokens: 8}",
    "eval.bits_per_byte={documents: 4}",
    "eval.line_completion={tasks: 4, max_new_tokens: 8}",
]
os.environ.update(
    {
        "AIRFLOW_HOME": str(scratch / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW_VAR_LATHE_HOME": str(ROOT),
        "AIRFLOW_VAR_LATHE_SET": " ".join(f"'{s}'" for s in SMALL),
        "AIRFLOW_VAR_LATHE_DEPLOY_ARGS": "--dry-run",
        "WANDB_MODE": "offline",
    }
)
subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True, stdout=subprocess.DEVNULL)

import threading  # noqa: E402
import time  # noqa: E402

from airflow._shared.timezones import timezone  # noqa: E402
from airflow.dag_processing.dagbag import DagBag  # noqa: E402  (after AIRFLOW_HOME is set)
from airflow.models.hitl import HITLUser  # noqa: E402
from airflow.models.taskinstance import TaskInstance  # noqa: E402
from airflow.models.trigger import handle_event_submit  # noqa: E402
from airflow.triggers.base import TriggerEvent  # noqa: E402
from airflow.utils.session import create_session  # noqa: E402
from airflow.utils.state import TaskInstanceState  # noqa: E402
from sqlalchemy import select  # noqa: E402
from sqlalchemy.orm import joinedload  # noqa: E402


def answer_approval() -> bool:
    """Record "Approve" for a waiting approve_production not answered yet; True once done."""
    with create_session() as session:
        ti = session.scalar(
            select(TaskInstance)
            .where(TaskInstance.task_id == "approve_production", TaskInstance.state == TaskInstanceState.AWAITING_INPUT)
            .options(joinedload(TaskInstance.hitl_detail))
        )
        if ti is None or ti.hitl_detail is None or ti.hitl_detail.responded_at is not None:
            return False
        detail = ti.hitl_detail
        detail.responded_by = HITLUser(id="dag-test", name="dag-test")
        detail.responded_at = timezone.utcnow()
        detail.chosen_options = ["Approve"]
        detail.params_input = {}
        session.add(detail)
        handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti, session=session)
    print(f"approver: approve_production of {ti.run_id} answered Approve", flush=True)
    return True


def approve_when_asked() -> None:
    """Answer each interval's approval once it waits for input (what a person does in the UI)."""
    while True:
        try:
            answer_approval()
        except Exception as exc:  # SQLite is shared with dag.test(): report and retry
            print(f"approver: {type(exc).__name__}: {exc}", flush=True)
        time.sleep(1)


def commit_day(day: datetime, packages: list[str]) -> None:
    """Copy stdlib packages (their .py files, tests left out) into the repository and commit them at noon of ``day``."""
    for name in packages:
        for src in (STDLIB / name).rglob("*.py"):
            if not {"test", "tests"} & set(src.parts):
                dst = SOURCE / name / src.relative_to(STDLIB / name)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    stamp = (day + timedelta(hours=12)).isoformat()
    git = ["git", "-C", str(SOURCE), "-c", "user.email=dag-test@example.org", "-c", "user.name=dag-test"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run(
        [*git, "commit", "-qm", f"code of {day.date()}"],
        check=True,
        env={**os.environ, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp},
    )


SOURCE.mkdir(parents=True, exist_ok=True)
subprocess.run(["git", "-C", str(SOURCE), "init", "-q"], check=True)
for day, packages in DAYS:  # the repository as it is today; each run reads it as of its interval
    commit_day(day, packages)
threading.Thread(target=approve_when_asked, daemon=True).start()

dag = DagBag(dag_folder=str(ROOT / "dags")).dags["raw_to_production"]
for t in dag.tasks:
    t.retries = 0  # a failure here is a bug to report now, not after the production retry delays
expected_success = [
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
# The first run serves for real; later ones mark the serving tasks done (their CLI calls are the
# same each day) and spend the time on what the backfill is about: data, shards, training, gate.
SERVING = "^(package|canary|deploy_staff|deploy_production)$"
for i, (day, _) in enumerate(DAYS):  # a backfill: one run per day, oldest first (max_active_runs=1)
    # @daily triggers at midnight; the run after a day reads the repository as of that midnight
    run = dag.test(logical_date=day + timedelta(days=1), mark_success_pattern=SERVING if i else None)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    print(f"run after {day.date()}: {dict(sorted(states.items()))}", flush=True)
    bad = [t for t in expected_success if not states.get(t, "").endswith("success")]
    bad += [t for t in ("gate_failed",) if not states.get(t, "").endswith("skipped")]
    if bad:
        sys.exit(f"dag.test {day.date()}: unexpected states for {bad} (its folder is kept: {scratch})")
print(
    f"dag.test: raw_to_production ran raw -> production end to end for {len(DAYS)} intervals ({scratch}"
    f"{', removed' if OWN_SCRATCH else ''})",
    flush=True,
)
if OWN_SCRATCH:
    shutil.rmtree(scratch, ignore_errors=True)
