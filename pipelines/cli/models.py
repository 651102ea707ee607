"""Model-registry commands: move `production` after staff tried a version; trace a version's lineage."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from lathe.pipelines.cli.app import ConfigOpt, SetOpt, app, console, tracked_config


@app.command()
def promote(
    config: Path = ConfigOpt,
    set_: list[str] | None = SetOpt,
) -> None:
    """Move the `production` alias to the model version that holds `staff` (after staff tried it)."""
    from lathe.core.models import ModelRegistry

    cfg = tracked_config(config, set_)
    version = ModelRegistry(cfg.train.registered_model).promote()
    console.print(f"{cfg.train.registered_model}: production -> version {version}")


@app.command()
def lineage(
    version: str | None = typer.Argument(None, help="Model version (default: the one holding `production`)."),
    config: Path = ConfigOpt,
    set_: list[str] | None = SetOpt,
) -> None:
    """The chain of versions VERSION was trained from, back to the first: snapshot, vocabulary, tokens, val loss."""
    from lathe.core.models import PRODUCTION, ModelRegistry

    cfg = tracked_config(config, set_)
    registry = ModelRegistry(cfg.train.registered_model)
    chain = registry.lineage_chain(version or registry.version_of(PRODUCTION))
    table = Table(title=f"{registry.name} v{chain[0]['version']}: lineage (newest first)")
    for col in ("version", "method", "parent", "data snapshot", "vocabulary", "tokens trained", "val loss"):
        table.add_column(col, justify="right" if col in ("tokens trained", "val loss") else "left")
    for link in chain:
        tokens = link.get("lathe.tokens", "")
        table.add_row(
            link["version"],
            link.get("lathe.method", "?"),
            link.get("lathe.parent_version") or "-",
            link.get("lathe.data_snapshot") or "-",
            link.get("lathe.tokenizer") or "-",
            f"{int(tokens):,}" if tokens else "-",
            link.get("lathe.val_loss") or "-",
        )
    console.print(table)
