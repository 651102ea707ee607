"""PII redaction: recall and look-alike retention per secret family, and throughput, before vs. after.

Run by `make bench` (never by tests: timings on shared 2-core machines are noisy):

    .venv/bin/python benchmarks/pii_bench.py [--mb 10] [--repeat 2] [--baseline REV] [--out runs/bench/pii_bench.json]

1. the labelled set of benchmarks/pii/cases.py (realistic files of 20 families):
   - recall: the share of labelled secret occurrences whose every character lies inside a
     redacted span;
   - retention: the share of look-alike items left untouched: whole look-alike files that
     must come out byte-identical, and `keep` spans of positive files that no redacted span
     may overlap;
   - the same two figures, apart, on benchmarks/pii/unseen.py: families written after the rules
     (``unseen``: secrets, recall, look-alikes, retention per family), how the detector generalises;
2. throughput: MB/s of `redact` (all kinds, default PIIConfig) over a fixed sample of the
   embedded corpus (stdlib + lathe's pinned packages, read from disk once), best of
   ``--repeat`` alternating runs, and the redactions per kind each finds there (real code:
   every extra one is a candidate false positive).

"Before" is data/pii.py at git revision ``--baseline`` (default: the last revision before
the secret families were added), loaded from `git show` beside the current one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import emit  # noqa: E402
from benchmarks.pii.cases import CASES, Case  # noqa: E402
from benchmarks.pii.unseen import UNSEEN  # noqa: E402
from lathe.data import pii  # noqa: E402
from lathe.data.config import EmbeddedSourceConfig, PIIConfig  # noqa: E402
from lathe.data.sources import read_text_file, sample_embedded  # noqa: E402

# data/pii.py before issue 14's secret families (emails, IPs, token formats, quoted assignments).
BASELINE_REV = "26bbae3533d7f035eca84c05882ba5ec0707a828"

Finder = Callable[[str, PIIConfig], list]


def load_baseline(rev: str) -> types.ModuleType:
    """data/pii.py at ``rev`` as a module of its own, beside the current one."""
    source = subprocess.run(["git", "show", f"{rev}:data/pii.py"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    module = types.ModuleType("lathe_pii_baseline")
    sys.modules[module.__name__] = module  # dataclasses look their module up while the source runs
    exec(compile(source, f"{rev[:8]}:data/pii.py", "exec"), module.__dict__)
    return module


def _covered(spans: list, start: int, end: int) -> bool:
    """Is every character of [start, end) inside one of ``spans``?"""
    pos = start
    for s in sorted(spans, key=lambda s: s.start):
        if s.start <= pos < s.end:
            pos = s.end
    return pos >= end


def _occurrences(text: str, sub: str) -> list[tuple[int, int]]:
    out, i = [], text.find(sub)
    while i != -1:
        out.append((i, i + len(sub)))
        i = text.find(sub, i + 1)
    return out


def score_case(case: Case, find: Finder, cfg: PIIConfig) -> dict[str, int]:
    """Secret occurrences found/total and look-alike items kept/total for one case."""
    spans = find(case.text, cfg)
    secrets = [o for s in case.secrets for o in _occurrences(case.text, s)]
    keeps = [o for k in case.keep for o in _occurrences(case.text, k)]
    kept = sum(all(sp.end <= a or sp.start >= b for sp in spans) for a, b in keeps)
    return {
        "secrets": len(secrets),
        "found": sum(_covered(spans, a, b) for a, b in secrets),
        "lookalikes": len(keeps) + case.is_lookalike,
        "kept": kept + (case.is_lookalike and not spans),
    }


def score(cases: list[Case], find: Finder, cfg: PIIConfig) -> dict[str, dict[str, int]]:
    """Summed figures per family, and overall under ``"overall"``."""
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for case in cases:
        for key, value in score_case(case, find, cfg).items():
            totals[case.family][key] += value
            totals["overall"][key] += value
    return totals


def _ratio(a: int, b: int) -> float:
    return round(a / b, 3) if b else 1.0


def throughput(
    docs: list[str], redact: Callable[[str, PIIConfig], tuple[str, dict[str, int]]], cfg: PIIConfig
) -> tuple[float, dict[str, int]]:
    """Seconds to redact every document, and the redactions per kind."""
    counts: dict[str, int] = defaultdict(int)
    t0 = time.perf_counter()
    for doc in docs:
        for kind, n in redact(doc, cfg)[1].items():
            counts[kind] += n
    return time.perf_counter() - t0, dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=10.0, help="embedded corpus sample for throughput (MB on disk)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of each implementation (best is kept)")
    parser.add_argument("--baseline", default=BASELINE_REV, help="git revision of data/pii.py measured as 'before'")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/pii_bench.json"))
    args = parser.parse_args()
    cfg = PIIConfig()
    before = load_baseline(args.baseline)

    after_scores, before_scores = score(CASES, pii.find_pii, cfg), score(CASES, before.find_pii, cfg)
    columns = ["secrets", "recall", "recall_before", "look-alikes", "retention", "retention_before"]
    report: dict[str, Any] = {"family": columns}
    for family in sorted(after_scores, key=lambda f: (f == "overall", f)):
        a, b = after_scores[family], before_scores[family]
        report[family] = [
            a["secrets"],
            _ratio(a["found"], a["secrets"]),
            _ratio(b["found"], b["secrets"]),
            a["lookalikes"],
            _ratio(a["kept"], a["lookalikes"]),
            _ratio(b["kept"], b["lookalikes"]),
        ]
    # families written after the rules (benchmarks/pii/unseen.py): how the detector generalises, never fitted
    unseen = score(UNSEEN, pii.find_pii, cfg)
    report["unseen"] = {
        family: [u["secrets"], _ratio(u["found"], u["secrets"]), u["lookalikes"], _ratio(u["kept"], u["lookalikes"])]
        for family, u in sorted(unseen.items(), key=lambda item: (item[0] == "overall", item[0]))
    }

    files = sample_embedded(EmbeddedSourceConfig(max_bytes=int(args.mb * 1e6)))
    docs = [text for f in files if (text := read_text_file(f.abs_path, f.size_bytes, 1_000_000)[0]) is not None]
    mb = sum(len(d.encode()) for d in docs) / 1e6
    best = {"before": float("inf"), "after": float("inf")}
    counts: dict[str, dict[str, int]] = {}
    for _ in range(args.repeat):  # alternate, so that load on the shared machine hits both alike
        for label, redact in (("before", before.redact), ("after", pii.redact)):
            seconds, counts[label] = throughput(docs, redact, cfg)
            best[label] = min(best[label], seconds)
    report.update(
        {
            "corpus_mb": round(mb, 2),
            "corpus_files": len(docs),
            "before_mb_per_s": round(mb / best["before"], 2),
            "after_mb_per_s": round(mb / best["after"], 2),
            "throughput_ratio_after_over_before": round(best["before"] / best["after"], 2),
            "corpus_redactions_before": counts["before"],
            "corpus_redactions_after": counts["after"],
        }
    )
    emit(report, args.out)


if __name__ == "__main__":
    main()
