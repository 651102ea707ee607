"""The Airflow backfill test's run, started in the background as soon as the session knows it
will run it (conftest's collection hook) and waited for by the test, which runs last.

The backfill (`tests/airflow/run_dag.py`: two days of raw_to_production through the CLI; `make dag-test`
runs three) takes about 6 minutes, half of it waiting on subprocesses (JVM and interpreter start-up,
Airflow's polling); the rest of the suite runs meanwhile instead of after it. Two days show what the
third did again: a run that continues from the version the day before promoted, on the same vocabulary.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_PYTHON = ROOT / ".venv-airflow" / "bin" / "python"
TEST_ID = "tests/test_dag.py::test_a_backfill_of_two_intervals_retrains_two_chained_versions"
DAYS = 2


@dataclass
class Backfill:
    """A running backfill: its process, scratch folder and output file."""

    process: subprocess.Popen
    scratch: Path
    output: Path
    awaited: bool = False  # the test waited for it: not finished by then is a failure too

    def wait(self, timeout_s: float = 1800) -> tuple[int, str]:
        """Its exit status and output, once it has finished."""
        self.awaited = True
        code = self.process.wait(timeout=timeout_s)
        return code, self.output.read_text(errors="replace")


_RUNNING: list[Backfill] = []


def start() -> Backfill | None:
    """Start the backfill (once per session); None when Airflow's venv is missing (the test says so)."""
    if _RUNNING or not AIRFLOW_PYTHON.is_file():
        return _RUNNING[0] if _RUNNING else None
    scratch = Path(tempfile.mkdtemp(prefix="lathe-backfill-"))
    env = {
        **os.environ,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "LATHE_DAG_TEST_DIR": str(scratch),
        "LATHE_DAG_TEST_DAYS": str(DAYS),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    output = scratch / "run_dag.log"
    with output.open("w") as out:
        # its own process group: stop() ends all of it (the CLI stages, Spark's JVMs, tritonserver), not the direct child only
        process = subprocess.Popen(
            [str(AIRFLOW_PYTHON), str(ROOT / "tests" / "airflow" / "run_dag.py")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    _RUNNING.append(Backfill(process, scratch, output))
    return _RUNNING[0]


def stop() -> None:
    """At the session's end (the test has read what it needs by then): end whatever is left of the backfill's
    process group (all of it, when the session failed or was interrupted before the backfill finished), and
    remove its scratch folder, unless the backfill failed: then it stays for a look, and its path is printed."""
    for run in _RUNNING:
        cut_short = run.process.poll() is None
        try:
            os.killpg(run.process.pid, signal.SIGKILL)  # the group outlives its leader while any member does
        except ProcessLookupError:
            pass  # none left
        run.process.wait()
        if run.process.returncode != 0 and (run.awaited or not cut_short):
            print(f"\nthe Airflow backfill failed (exit status {run.process.returncode}); its folder is kept: {run.scratch}")
        else:  # it succeeded, or the session ended before its test waited for it
            shutil.rmtree(run.scratch, ignore_errors=True)
    _RUNNING.clear()
