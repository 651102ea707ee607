"""The built wheel works without the checkout: `pip wheel .`, installed into a fresh venv that reuses the locked
dependencies, runs `lathe eval score` on every language and finds every data file it needs."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from lathe.eval.benchmarks import BENCHMARKS

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel alone; the locked dependencies come from this venv's site-packages as a
    plain path (not a site directory, so the checkout's editable install of lathe stays out of it)."""
    root = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "dist").glob("lathe-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site = Path(
        subprocess.run(
            [str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "locked-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    return venv


def test_the_wheel_installs_lathe_alone_under_its_namespace(installed: Path) -> None:
    where = subprocess.run(
        [str(installed / "bin/python"), "-c", "import lathe.eval, lathe.core; print(lathe.eval.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout.strip()
    site = Path(where).parents[2]
    assert Path(where).is_relative_to(installed) and site.name == "site-packages", where
    assert sorted(p.name for p in (site / "lathe").iterdir() if p.is_dir() and p.name != "__pycache__") == [
        "core",
        "data",
        "deploy",
        "eval",
        "pipelines",
        "serving",
        "tokenizer",
        "training",
    ]
    assert (site / "lathe/core/log4j2.properties").is_file()
    # the toolchain's lock ships, its node_modules do not: `npm ci --prefix` the installed folder brings them
    assert (site / "lathe/eval/toolchains/package-lock.json").is_file() and not (
        site / "lathe/eval/toolchains/node_modules"
    ).exists()


@pytest.mark.parametrize(
    "benchmark", ["humaneval", "humaneval-js", "humaneval-ts", "humaneval-java", "humaneval-cpp", "humaneval-rust"]
)
def test_the_installed_cli_scores_every_language(installed: Path, benchmark: str, tmp_path: Path) -> None:
    bench = BENCHMARKS.get(benchmark)
    references = bench.references()
    first, second = list(references)[:2]
    samples = tmp_path / "samples.jsonl"
    wrong = "    return None\n" if benchmark == "humaneval" else bench.problems()[second]["wrong_solution"]
    samples.write_text(
        json.dumps({"task_id": first, "completion": references[first]})
        + "\n"
        + json.dumps({"task_id": second, "completion": wrong})
        + "\n"
    )
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            str(installed / "bin/lathe"),
            "eval",
            "score",
            "--benchmark",
            benchmark,
            "--samples",
            str(samples),
            "--output",
            str(out),
            # the checkout's npm-installed TypeScript compiler (the wheel ships only its lock)
            "--set",
            f"eval.sandbox.toolchains={REPO / 'eval/toolchains'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["status"] for r in json.loads(out.read_text())["results"]] == ["passed", "failed"]
