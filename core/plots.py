"""Headless plotting: every plot lathe makes is a PNG file, logged to MLflow."""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (no display on servers, CI or Spark drivers).

    Imported on first use, so modules that plot do not pay matplotlib's import at import time.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
