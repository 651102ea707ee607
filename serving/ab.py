"""A/B between served versions: which track a user is on, and which arm users accept more from.

Routing is a stable hash of the user id (so a user keeps one arm across requests and gateway
replicas): staff users go to ``staff``; everyone else to ``candidate`` with the configured share,
else ``production``. The report compares acceptance rates (accepted / shown suggestions) per arm
and language with Wilson 95% intervals and a two-sided two-proportion z-test, and says which arm
is ahead only when the test says so and both arms have enough shown suggestions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lathe.serving.config import AbConfig


def route(user: str, cfg: AbConfig) -> str:
    """The track that serves ``user``: staff, candidate (a stable ``candidate_share`` of users) or production."""
    if user in cfg.staff_users:
        return "staff"
    if cfg.candidate_share > 0:
        bucket = int.from_bytes(hashlib.sha256(f"{cfg.salt}:{user}".encode()).digest()[:8], "big") / 2**64
        if bucket < cfg.candidate_share:
            return "candidate"
    return "production"


def wilson(accepted: int, shown: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (sound at small counts and rates near 0 or 1)."""
    if shown == 0:
        return 0.0, 1.0
    p = accepted / shown
    centre = (p + z * z / (2 * shown)) / (1 + z * z / shown)
    half = z * math.sqrt(p * (1 - p) / shown + z * z / (4 * shown * shown)) / (1 + z * z / shown)
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value that two acceptance rates differ (pooled z-test); 1.0 when it cannot be computed."""
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (k1 / n1 - k2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2))


@dataclass
class Cell:
    """Shown and accepted suggestions of one arm (and language)."""

    arm: str
    language: str
    versions: set[str]
    shown: int = 0
    accepted: int = 0

    @property
    def rate(self) -> float:
        """Accepted / shown."""
        return self.accepted / self.shown if self.shown else 0.0


@dataclass
class Comparison:
    """Production against candidate, for all languages or one."""

    language: str
    production: Cell
    candidate: Cell
    p_value: float
    verdict: str


def tally(outcomes: Iterable[dict[str, Any]]) -> dict[tuple[str, str], Cell]:
    """Cells per (track, language) and per (track, "all")."""
    cells: dict[tuple[str, str], Cell] = {}
    for o in outcomes:
        for language in (o["language"], "all"):
            cell = cells.setdefault((o["track"], language), Cell(o["track"], language, set()))
            cell.versions.add(o["model_version"])
            cell.shown += 1
            cell.accepted += int(o["accepted"])
    return cells


def compare(cells: dict[tuple[str, str], Cell], min_shown: int, alpha: float) -> list[Comparison]:
    """The A/B verdict overall and per language that both arms served."""
    languages = ["all", *sorted({lang for (_, lang) in cells if lang != "all"})]
    out = []
    for language in languages:
        prod = cells.get(("production", language), Cell("production", language, set()))
        cand = cells.get(("candidate", language), Cell("candidate", language, set()))
        if language != "all" and (prod.shown == 0 or cand.shown == 0):
            continue
        p = two_proportion_p(prod.accepted, prod.shown, cand.accepted, cand.shown)
        short = [c for c in (prod, cand) if c.shown < min_shown]
        if short:
            need = ", ".join(f"{c.arm} has {c.shown}" for c in short)
            verdict = f"not enough data yet: {need} shown suggestion(s); the test needs {min_shown} per arm"
        elif p < alpha:
            ahead, behind = (cand, prod) if cand.rate > prod.rate else (prod, cand)
            verdict = f"{ahead.arm} is ahead: {ahead.rate:.1%} vs {behind.rate:.1%} accepted (p = {p:.3g} < {alpha})"
        else:
            verdict = f"no significant difference ({prod.rate:.1%} vs {cand.rate:.1%}, p = {p:.3g} >= {alpha})"
        out.append(Comparison(language, prod, cand, p, verdict))
    return out
