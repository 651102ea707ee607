"""The one-screen summary of a profile's run: each finished stage's headline, read from its manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lathe.core.registry import Registry
from lathe.core.stage import Stage, read_manifest
from lathe.pipelines.stages import pipeline_stages


def summary_rows(profile_dir: Path, stages: Registry[Stage[Any]] | None = None) -> list[tuple[str, str, str]]:
    """(stage, headline figures, where its first declared output is) for every finished stage, in pipeline order."""
    stages = stages or pipeline_stages()
    rows: list[tuple[str, str, str]] = []
    for name in stages:
        stage = stages.get(name)
        out_dir = profile_dir / name
        manifest = read_manifest(out_dir)
        if manifest is None or stage.headline is None:
            continue
        # the first output the stage declares (manifests store theirs sorted by name)
        first = next(iter(stage.outputs), None)
        where = stage.upstream(out_dir, manifest).uri(first) if first else str(out_dir)
        rows.append((name, stage.headline(manifest), where))
    return rows


def print_summary(
    profile_dir: Path,
    console: Console,
    extra: list[tuple[str, str, str]] | None = None,
    stages: Registry[Stage[Any]] | None = None,
) -> None:
    """The table, then the canary's completions: the prompt alone, then at a cursor with code after it."""
    stages = stages or pipeline_stages()
    table = Table(title=f"lathe: {profile_dir.name}", show_lines=False)
    for col in ("stage", "result", "artifacts"):
        table.add_column(col, overflow="fold")
    for row in [*summary_rows(profile_dir, stages), *(extra or [])]:
        table.add_row(*row)
    console.print(table)
    canary = read_manifest(profile_dir / "canary") if "canary" in stages else None
    if canary:
        report = Path(stages.get("canary").upstream(profile_dir / "canary", canary).uri("report"))
        c = json.loads(report.read_text())
        console.print(f"Triton answered {c['prompt']!r} with {c['completion']!r}", highlight=False)
        if fim := c.get("fim"):  # the product's task, last: the served middle between the prompt and its suffix
            console.print(
                f"At the cursor in {c['prompt'] + '<cursor>' + fim['suffix']!r}, Triton wrote {fim['completion']!r}",
                highlight=False,
            )
