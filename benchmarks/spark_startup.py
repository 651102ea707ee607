"""What a Spark stage pays before it does any work, with and without the driver's class-data-sharing archive
(`make setup` writes it; lathe.core.spark), and what a new MLflow store costs with and without the migrated
template (lathe.core.tracking). Every lathe command that runs a Spark stage, each Airflow task and each test
that starts a session pays the first; every new profile, backfill day and test store the second.

Each round starts a fresh interpreter (a session is once per process), alternating the two settings:

    .venv/bin/python benchmarks/spark_startup.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit

SESSION = """
import time, sys
t0 = time.perf_counter()
from lathe.core.spark import SparkConfig, spark_session, driver_java_options
options = driver_java_options()
if sys.argv[1] == "off":
    options = options.split(" -XX:SharedArchiveFile=")[0]
spark = spark_session(SparkConfig(master="local[2]", driver_memory="1g", shuffle_partitions=2), "bench", options)
t1 = time.perf_counter()
spark.range(1000).selectExpr("id % 7 AS k").groupBy("k").count().collect()
t2 = time.perf_counter()
print(f"{t1 - t0:.2f} {t2 - t1:.2f}")
"""

STORE = """
import sys, time
from pathlib import Path
import mlflow  # imported before the clock starts: every store pays it, seeded or not
from lathe.core import tracking
if sys.argv[1] == "off":
    tracking.seed_store = lambda uri: None
t0 = time.perf_counter()
tracking.setup_tracking(Path(sys.argv[2]), None, "lathe")
print(f"{time.perf_counter() - t0:.2f}")
"""


def timed(script: str, *args: str) -> list[float]:
    """Run ``script`` in a fresh interpreter; the seconds it prints."""
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True)
    return [float(x) for x in done.stdout.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/spark_startup.json"))
    args = parser.parse_args()
    from lathe.core.spark import cds_archive

    if not cds_archive().is_file():
        sys.exit(f"error: {cds_archive()} is missing; run `make setup` (it writes the archive)")
    session: dict[str, list[list[float]]] = {"on": [], "off": []}
    store: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.rounds):
            for setting in ("on", "off"):
                session[setting].append(timed(SESSION, setting))
                store[setting].append(timed(STORE, setting, f"{scratch}/{setting}-{r}")[0])
    start = {k: statistics.median(s[0] for s in v) for k, v in session.items()}
    first_job = {k: statistics.median(s[1] for s in v) for k, v in session.items()}
    report: dict[str, float] = {"rounds": args.rounds}
    for setting in ("on", "off"):
        report[f"session_start_s.archive_{setting}"] = round(start[setting], 2)
        report[f"first_job_s.archive_{setting}"] = round(first_job[setting], 2)
        report[f"new_mlflow_store_s.template_{setting}"] = round(statistics.median(store[setting]), 2)
    report["session_and_first_job.archive_on_over_off"] = round(
        (start["on"] + first_job["on"]) / (start["off"] + first_job["off"]), 2
    )
    emit(report, args.out)


if __name__ == "__main__":
    main()
