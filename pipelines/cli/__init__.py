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
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:
        import click
        from typer.exceptions import TyperException

        # Typer 0.2x parses with its own copy of click: a usage error (an unknown command, a missing argument) is a
        # TyperException there, click's own ClickException elsewhere; both know how to print themselves.
        if isinstance(exc, (click.exceptions.ClickException, TyperException)) and hasattr(exc, "show"):
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise
