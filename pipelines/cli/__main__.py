"""`python -m lathe.pipelines.cli` is the `lathe` command."""

from lathe.pipelines.cli import main

main()
