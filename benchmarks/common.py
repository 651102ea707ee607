"""What every benchmark does with its figures: save them as JSON and print them as a table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(report: dict[str, Any], out: Path) -> None:
    """Write ``report`` to ``out`` (JSON) and print one aligned line per figure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
