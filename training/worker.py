"""Entry point of one rank under Composer's launcher: `composer -n N -m lathe.training.worker JOB.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lathe.training.job import TrainJob
from lathe.training.trainer import run_training


def main() -> None:
    """Run the job described by the JSON file given as the only argument."""
    job = TrainJob.model_validate(json.loads(Path(sys.argv[1]).read_text()))
    run_training(job)


if __name__ == "__main__":
    main()
