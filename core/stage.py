"""The stage contract: named units with declared inputs and outputs, a config section and a run function.

A stage names the artifacts it writes (``outputs``); the runner records where each one
landed in the stage's manifest, and a downstream stage asks its ``Upstream`` for them by
name instead of knowing the writer's folder layout. Components define their stages here
against this contract; which stages make up the pipeline is decided by the roof
(``lathe.pipelines.stages``), so nothing below it imports a stage module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from rich.console import Console

from lathe.core.errors import InputError, LatheError

MANIFEST = "manifest.json"

# The assembled configuration (the roof's LatheConfig). A stage reads only the sections it
# fingerprints; typing it as a parameter keeps this module free of the components' configs.
C = TypeVar("C")


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The finished stage's manifest, or None if the stage never finished there."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a torn manifest means an unfinished stage


@dataclass(frozen=True)
class Upstream:
    """A finished input stage, as its manifest records it: readers ask it for declared outputs by name."""

    stage: str
    dir: Path
    outputs: dict[str, str]  # output name -> local path or URI where it was written
    manifest: dict[str, Any] = field(default_factory=dict)

    def uri(self, name: str) -> str:
        """Where output ``name`` was written: a local path or an object-store URI."""
        try:
            return self.outputs[name]
        except KeyError:
            raise LatheError(
                f"stage {self.stage!r} declares no output {name!r}; it declares: {', '.join(self.outputs) or '(none)'}"
            ) from None

    def path(self, name: str) -> Path:
        """Output ``name`` as a local path that exists; one clear line when it does not."""
        uri = self.uri(name)
        if "://" in uri:
            raise InputError(f"{self.stage} output {name!r} is remote ({uri}); this reader needs a local copy")
        path = Path(uri)
        if not path.exists():
            raise InputError(f"{self.stage} output {name!r} ({path}) not found; rerun `lathe run {self.stage} --force`")
        return path

    @property
    def details(self) -> dict[str, Any]:
        """The ``details`` the upstream stage reported (figures a reader may need, e.g. a model version)."""
        return self.manifest.get("details") or {}


@dataclass
class StageContext(Generic[C]):
    """What a stage's run function gets: never globals or hidden paths."""

    config: C
    out_dir: Path  # runs/<profile>/<stage>/, empty at start (unless a resumable stage continues)
    inputs: dict[str, Upstream]  # upstream stage name -> its recorded outputs
    console: Console
    fingerprint: str = ""  # this run's fingerprint: stable names for resumable work (checkpoints)
    observed: dict[str, str] = field(default_factory=dict)  # what `Stage.observe` saw; the run must use exactly this
    outputs: dict[str, str] = field(default_factory=dict)  # where each declared output goes by default (under out_dir)
    previous: Upstream | None = None  # an incremental stage's last finished run (moved aside), to continue from


@dataclass
class StageResult:
    """What a stage reports; the runner writes it to the manifest and to MLflow."""

    counts: dict[str, int] = field(default_factory=dict)  # rows/tokens in, kept, dropped...
    metrics: dict[str, float] = field(default_factory=dict)  # logged as MLflow metrics
    artifacts: list[Path] = field(default_factory=list)  # files logged as MLflow artifacts
    details: dict[str, Any] = field(default_factory=dict)  # anything else worth keeping in the manifest
    outputs: dict[str, str] = field(default_factory=dict)  # declared outputs written elsewhere than their default (a URI)


@dataclass(frozen=True)
class Stage(Generic[C]):
    """A pipeline stage.

    ``version`` is part of the fingerprint: bump it when the stage's logic changes so
    outputs made by older code are not reused.
    """

    name: str
    inputs: tuple[str, ...]
    section: Callable[[C], BaseModel]  # the config section it is fingerprinted and tracked by
    run: Callable[[StageContext[C]], StageResult]
    # Output name -> default location relative to the stage folder ("." is the folder itself).
    # The first is the one a summary points at.
    outputs: Mapping[str, str] = field(default_factory=dict)
    version: str = "1"
    summarize: Callable[[Path, Console], None] | None = None  # reprint the summary of a finished stage
    headline: Callable[[dict[str, Any]], str] | None = None  # one line of figures from its manifest
    # What the stage reads from outside its inputs (a registry alias, a source's state), stated
    # cheaply before it runs. It is part of the fingerprint, so a change reruns the stage.
    observe: Callable[[C], dict[str, str]] | None = None
    # Resumable stages keep an unfinished output directory of the same fingerprint
    # (checkpoints) so a rerun continues; others start from an empty directory.
    resumable: bool = False
    # For a finished stage about to be skipped: what, outside its folder, it made and still needs
    # (a registered model version); a problem line makes the runner rerun the stage instead.
    verify: Callable[[dict[str, Any], dict[str, Upstream]], str | None] | None = None
    # Incremental stages get their last finished run (ctx.previous) when they rerun with a new
    # fingerprint, to carry work over (the data stage's per-file pool); --force starts from nothing.
    incremental: bool = False
    # Optional stages (post-training) run only when named, or when a named stage needs them:
    # `lathe run` without names runs the others.
    optional: bool = False

    def locate_outputs(self, out_dir: Path, written: Mapping[str, str]) -> dict[str, str]:
        """Where each declared output is: its default under ``out_dir`` unless the run said otherwise.

        A run that reports an undeclared output, or a local output that does not exist,
        is a bug in the stage, caught before its manifest is written.
        """
        undeclared = sorted(set(written) - set(self.outputs))
        if undeclared:
            raise ValueError(f"stage {self.name!r} wrote undeclared output(s) {undeclared}; declare them in Stage.outputs")
        located = {**self.default_outputs(out_dir), **written}
        missing = [f"{n} ({p})" for n, p in located.items() if "://" not in p and not Path(p).exists()]
        if missing:
            raise ValueError(f"stage {self.name!r} did not write its declared output(s): {', '.join(missing)}")
        return located

    def default_outputs(self, out_dir: Path) -> dict[str, str]:
        """Where each declared output goes unless the run says otherwise."""
        return {name: str(out_dir / rel) for name, rel in self.outputs.items()}

    def upstream(self, out_dir: Path, manifest: dict[str, Any]) -> Upstream:
        """This stage's finished outputs as a reader sees them (from its manifest)."""
        recorded = manifest.get("outputs") or self.default_outputs(out_dir)
        return Upstream(self.name, out_dir, dict(recorded), manifest)


def json_summary(relative: str, show: Callable[[Any, Console], None]) -> Callable[[Path, Console], None]:
    """A ``Stage.summarize`` that reprints a finished stage's JSON report with ``show``."""

    def summarize(out_dir: Path, console: Console) -> None:
        path = out_dir / relative
        if path.is_file():
            show(json.loads(path.read_text()), console)

    return summarize
