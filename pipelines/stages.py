"""The stage registry: named units with declared inputs, a config section and a run function."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel
from rich.console import Console

from pipelines.config import LatheConfig
from pipelines.registry import Registry


@dataclass
class StageContext:
    """What a stage's run function gets: never globals or hidden paths."""

    config: LatheConfig
    out_dir: Path  # runs/<profile>/<stage>/, empty at start
    inputs: dict[str, Path]  # upstream stage name -> its output directory
    console: Console
    fingerprint: str = ""  # this run's fingerprint: stable names for resumable work (checkpoints)


@dataclass
class StageResult:
    """What a stage reports; the runner writes it to the manifest and to MLflow."""

    counts: dict[str, int] = field(default_factory=dict)  # rows/tokens in, kept, dropped...
    metrics: dict[str, float] = field(default_factory=dict)  # logged as MLflow metrics
    artifacts: list[Path] = field(default_factory=list)  # files logged as MLflow artifacts
    details: dict[str, Any] = field(default_factory=dict)  # anything else worth keeping in the manifest


@dataclass(frozen=True)
class Stage:
    """A pipeline stage.

    ``version`` is part of the fingerprint: bump it when the stage's logic changes so
    outputs made by older code are not reused.
    """

    name: str
    inputs: tuple[str, ...]
    section: Callable[[LatheConfig], BaseModel]
    run: Callable[[StageContext], StageResult]
    version: str = "1"
    summarize: Callable[[Path, Console], None] | None = None  # reprint the summary of a finished stage
    # Resumable stages keep an unfinished output directory of the same fingerprint
    # (checkpoints) so a rerun continues; others start from an empty directory.
    resumable: bool = False


STAGES: Registry[Stage] = Registry("stage")


def json_summary(relative: str, show: Callable[[Any, Console], None]) -> Callable[[Path, Console], None]:
    """A ``Stage.summarize`` that reprints a finished stage's JSON report with ``show``."""

    def summarize(out_dir: Path, console: Console) -> None:
        path = out_dir / relative
        if path.is_file():
            show(json.loads(path.read_text()), console)

    return summarize


def register(stage: Stage) -> Stage:
    """Add a stage to the registry; the runner orders stages by their inputs."""
    STAGES.register(stage.name)(stage)
    return stage


def load_stages() -> Registry[Stage]:
    """Import the modules that register stages and return the registry."""
    import data.stage  # noqa: F401  (registers `data`)
    import tokenizer.stage  # noqa: F401  (registers `tokenizer`, `shards`)
    import training.stage  # noqa: F401  (registers `train`)
    import eval.stage  # noqa: F401  (registers `eval`)
    import serving.stage  # noqa: F401  (registers `package`, `canary`)

    return STAGES
