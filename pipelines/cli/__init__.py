"""The `lathe` command line: thin commands over one library function each, one module per command group.

- ``pipeline``: run, train, sweep, gate, summary, replay-spike (the stages and their results)
- ``evaluate``: eval score, eval humaneval
- ``serve``: serve, complete
- ``models``: promote, lineage
- ``deploy``: deploy, k8s validate
- ``data``: data clean
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from lathe.core.errors import LatheError
from lathe.pipelines.cli import data, deploy, evaluate, models, pipeline, serve  # noqa: F401  (each registers its commands)
from lathe.pipelines.cli.app import app


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    try:
        app(standalone_mode=False)
    except LatheError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise
