"""The Airflow backfill test's run, started in the background as soon as the session knows it
will run it (conftest's collection hook) and waited for by the test, which runs last.

The backfill (`tests/airflow/run_dag.py`: three days of raw_to_production through the CLI) takes
about 9 minutes, half of it waiting on subprocesses (JVM and interpreter start-up, Airflow's
polling); the rest of the suite runs meanwhile instead of after it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_PYTHON = ROOT / ".venv-airflow" / "bin" / "python"
TEST_ID = "tests/test_dag.py::test_a_backfill_of_three_intervals_retrains_three_chained_versions"


@dataclass
class Backfill:
    """A running backfill: its process, scratch folder and output file."""

    process: subprocess.Popen
    scratch: Path
    output: Path

    def wait(self, timeout_s: float = 1800) -> tuple[int, str]:
        """Its exit status and output, once it has finished."""
        code = self.process.wait(timeout=timeout_s)
        return code, self.output.read_text(errors="replace")


_RUNNING: list[Backfill] = []


def start() -> Backfill | None:
    """Start the backfill (once per session); None when Airflow's venv is missing (the test says so)."""
    if _RUNNING or not AIRFLOW_PYTHON.is_file():
        return _RUNNING[0] if _RUNNING else None
    scratch = Path(tempfile.mkdtemp(prefix="lathe-backfill-"))
    env = {**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "false", "LATHE_DAG_TEST_DIR": str(scratch)}
    env.pop("MLFLOW_TRACKING_URI", None)
    output = scratch / "run_dag.log"
    with output.open("w") as out:
        process = subprocess.Popen([str(AIRFLOW_PYTHON), str(ROOT / "tests" / "airflow" / "run_dag.py")], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    _RUNNING.append(Backfill(process, scratch, output))
    return _RUNNING[0]


def stop() -> None:
    """End a backfill still running when the session ends (a failed or interrupted session)."""
    for run in _RUNNING:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()
