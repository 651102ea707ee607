"""`make dag-test`: run raw_to_production end to end with `dag.test()` (in .venv-airflow).

The lathe stages run for real through the CLI on a small profile in a scratch runs dir;
deploys are dry runs (no cluster here) and the production approval, unanswered, times
out to its default (Reject), so promote and deploy_production are skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
scratch = Path(tempfile.mkdtemp(prefix="lathe-dag-test-"))
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
    "AIRFLOW_VAR_LATHE_APPROVAL_TIMEOUT_H": str(5 / 3600), "WANDB_MODE": "offline",
})
subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True, stdout=subprocess.DEVNULL)

from airflow.dag_processing.dagbag import DagBag  # noqa: E402  (after AIRFLOW_HOME is set)

dag = DagBag(dag_folder=str(ROOT / "dags")).dags["raw_to_production"]
run = dag.test()
states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
print({k: states[k] for k in sorted(states)})
expected_success = ["data", "tokenizer", "shards", "train", "eval", "gate", "package", "canary", "deploy_staff", "approve_production"]
bad = [t for t in expected_success if not states.get(t, "").endswith("success")]
bad += [t for t in ("gate_failed", "promote", "deploy_production") if not states.get(t, "").endswith("skipped")]
if bad:
    sys.exit(f"dag.test: unexpected states for {bad}")
print(f"dag.test: raw_to_production ran end to end ({scratch}); production waits for approval")
