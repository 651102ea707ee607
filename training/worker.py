"""Entry point of one rank, as lathe's launcher starts it: `python -m lathe.training.worker JOB.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lathe.training.job import FinetuneJob, TrainJob


def main() -> None:
    """Run the job described by the JSON file given as the only argument (pretraining or post-training)."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    if "method" in spec:  # only a post-training job names a method
        from lathe.training.posttrain.finetune import run_finetune

        run_finetune(FinetuneJob.model_validate(spec))
    else:
        from lathe.training.trainer import run_training

        run_training(TrainJob.model_validate(spec))


if __name__ == "__main__":
    main()
