"""Run with .venv-airflow's python: load dags/ through a DagBag and write the DAG's shape as JSON to argv[1]."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags"))
if bag.import_errors:
    Path(sys.argv[1]).write_text(json.dumps({"import_errors": {k: v.splitlines()[-1] for k, v in bag.import_errors.items()}}))
    sys.exit(0)
dag = bag.dags["raw_to_production"]
Path(sys.argv[1]).write_text(
    json.dumps(
        {
            "import_errors": {},
            "schedule": str(getattr(dag, "schedule", None) or dag.timetable),
            "tasks": {
                t.task_id: {
                    "type": type(t).__name__,
                    "downstream": sorted(t.downstream_task_ids),
                    "retries": t.retries,
                    "timeout_s": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                    "outlets": [a.uri for a in t.outlets],
                    "command": getattr(t, "bash_command", None),
                    "arguments": getattr(t, "arguments", None),
                }
                for t in dag.tasks
            },
        }
    )
)
