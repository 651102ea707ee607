"""`make dag-test`: run raw_to_production end to end with `dag.test()` (in .venv-airflow).

The lathe stages run for real through the CLI on a small profile in a scratch runs dir;
deploys are dry runs (no cluster here). `dag.test()` parks the production approval until
someone answers, so a thread answers "Approve" the way the Airflow UI's Required Actions
page does (the same database writes as the HITL REST endpoint), and promote and
deploy_production then run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
scratch = Path(os.environ.get("LATHE_DAG_TEST_DIR") or tempfile.mkdtemp(prefix="lathe-dag-test-"))
SMALL = [f"run.runs_dir={scratch / 'runs'}", "data.sources=[{kind: embedded, max_bytes: 1500000, seed: 0}]",
         "tokenizer.vocab_size=512", "tokenizer.ablation_vocab_sizes=[]", "shards.seq_len=128",
         "train.model={d_model: 64, n_layers: 2, n_heads: 2, max_seq_len: 128}", "train.max_duration=8ba",
         "train.warmup=2ba", "train.eval_interval=8ba", "train.save_interval=8ba", "train.global_train_batch_size=4",
         "train.device_train_microbatch_size=4", "eval.ks=[1]", "eval.generation={limit: 2, n: 1, max_new_tokens: 8}",
         "serve.canary_load={clients: 2, seconds: 2, max_tokens: 4}"]
os.environ.update({
    "AIRFLOW_HOME": str(scratch / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW_VAR_LATHE_HOME": str(ROOT),
    "AIRFLOW_VAR_LATHE_SET": " ".join(f"'{s}'" for s in SMALL), "AIRFLOW_VAR_LATHE_DEPLOY_ARGS": "--dry-run",
    "WANDB_MODE": "offline",
})
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
    """Record "Approve" for a waiting approve_production; True once done."""
    with create_session() as session:
        ti = session.scalar(select(TaskInstance).where(TaskInstance.task_id == "approve_production",
                                                       TaskInstance.state == TaskInstanceState.AWAITING_INPUT)
                              .options(joinedload(TaskInstance.hitl_detail)))
        if ti is None or ti.hitl_detail is None:
            return False
        detail = ti.hitl_detail
        detail.responded_by = HITLUser(id="dag-test", name="dag-test")
        detail.responded_at = timezone.utcnow()
        detail.chosen_options = ["Approve"]
        detail.params_input = {}
        session.add(detail)
        handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti, session=session)
    print("approver: approve_production answered Approve", flush=True)
    return True


def approve_when_asked() -> None:
    """Answer the approval once it waits for input (what a person does in the UI)."""
    while True:
        try:
            if answer_approval():
                return
        except Exception as exc:  # SQLite is shared with dag.test(): report and retry
            print(f"approver: {type(exc).__name__}: {exc}", flush=True)
        time.sleep(1)


threading.Thread(target=approve_when_asked, daemon=True).start()

dag = DagBag(dag_folder=str(ROOT / "dags")).dags["raw_to_production"]
run = dag.test()
states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
print({k: states[k] for k in sorted(states)})
expected_success = ["data", "tokenizer", "shards", "train", "eval", "gate", "package", "canary", "deploy_staff",
                    "approve_production", "promote", "deploy_production"]
bad = [t for t in expected_success if not states.get(t, "").endswith("success")]
bad += [t for t in ("gate_failed",) if not states.get(t, "").endswith("skipped")]
if bad:
    sys.exit(f"dag.test: unexpected states for {bad}")
print(f"dag.test: raw_to_production ran raw -> production end to end ({scratch})")
