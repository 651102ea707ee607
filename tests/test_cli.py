"""The `lathe` command line as an operator uses it: real processes, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration  # the tests run the `lathe` CLI in a subprocess (and `data clean` runs Spark)

LATHE = [sys.executable, "-m", "lathe.pipelines.cli"]


def lathe(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([*LATHE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    import re

    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "WARN" not in line]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_unknown_config_key_is_one_line(tmp_path: Path) -> None:
    # a runs folder of its own: were the validation broken, the run would not write into the repository's runs/
    proc = lathe("run", "--set", f"run.runs_dir={tmp_path / 'runs'}", "--set", "data.dedup.thresold=0.5")
    assert_one_line_error(proc, r"unknown key data\.dedup\.thresold")
    assert not (tmp_path / "runs").exists()


def test_unknown_stage_is_one_line(tmp_path: Path) -> None:
    proc = lathe("run", "nostage", "--config", str(REPO / "configs/tiny.yaml"), "--set", f"run.runs_dir={tmp_path}")
    assert_one_line_error(
        proc, r"unknown stage 'nostage'; valid: canary, data, distill, distill_eval, dpo, dpo_eval, eval, package, pairs"
    )


def test_an_unknown_command_is_a_usage_error_not_a_traceback() -> None:
    proc = lathe("nosuchcommand")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "│" not in proc.stderr, proc.stderr
    assert "Error: No such command 'nosuchcommand'." in proc.stderr and "--help' for help." in proc.stderr


def test_finetune_names_its_method_data_and_starting_model(tmp_path: Path) -> None:
    from lathe.pipelines.cli.pipeline import finetune_overrides
    from lathe.pipelines.config import load_config

    cfg = load_config(
        REPO / "configs/tiny.yaml", finetune_overrides("sft-lora", "s3://bucket/pairs.jsonl", "models:/lathe-code/7")
    )
    assert cfg.sft.lora is not None and cfg.sft.init_from == "models:/lathe-code/7"
    assert cfg.pairs.sft_files == ["s3://bucket/pairs.jsonl"] and not cfg.pairs.mine
    cfg = load_config(REPO / "configs/tiny.yaml", finetune_overrides("dpo", "feedback/pairs.jsonl", None))
    assert cfg.dpo.lora is None and cfg.dpo.init_from == "models:/lathe-code@production"
    assert (
        cfg.pairs.preference_files == ["feedback/pairs.jsonl"]
        and not cfg.preferences.execution
        and cfg.preferences.self_play == 0
    )
    assert_one_line_error(
        lathe("finetune", "--method", "rlhf", "--set", f"run.runs_dir={tmp_path / 'runs'}"),
        r"unknown method 'rlhf'; choose one of sft, sft-lora, dpo, dpo-lora",
    )


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    proc = lathe("run", "--config", "configs/none.yaml", "--set", f"run.runs_dir={tmp_path / 'runs'}")
    assert_one_line_error(proc, r"config file configs/none\.yaml not found")
    assert not (tmp_path / "runs").exists()


def test_data_clean_missing_input_is_one_line(tmp_path: Path) -> None:
    proc = lathe("data", "clean", "--input", str(tmp_path / "nothing.parquet"), "--output", str(tmp_path / "out"))
    assert_one_line_error(proc, r"parquet input .*nothing\.parquet does not exist")


@pytest.mark.spark
def test_data_clean_by_hand(spark, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`lathe data clean` through the console entry point, in this process: its Spark session is the suite's (a
    subprocess would start a JVM of its own for four rows); exit codes and one-line errors are the other tests'."""
    from lathe.pipelines.cli import main

    rows = pd.DataFrame(
        {
            "content": [
                "def area(r):\n    return 3.14159 * r * r\n",
                "def area(r):\n    return 3.14159 * r * r\n",  # exact duplicate
                "def broken(:\n",
                'OWNER = "ops@example.org"\n',
            ],
            "path": ["geo/area.py", "copy/area.py", "bad.py", "owner.py"],
            "repo": ["org/geo"] * 4,
        }
    )
    rows.to_parquet(tmp_path / "in.parquet")
    monkeypatch.setattr(
        sys, "argv", ["lathe", "data", "clean", "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out")]
    )
    main()  # returns: an error would have exited
    assert "x-ray" in capsys.readouterr().out
    kept = pd.read_parquet(tmp_path / "out" / "kept")
    dropped = pd.read_parquet(tmp_path / "out" / "dropped")
    assert len(kept) + len(dropped) == 4
    assert sorted(dropped["reason"]) == ["exact_duplicate", "parse_error"]
    assert set(dropped.columns) >= {"id", "path", "reason"} and kept["id"].notna().all()
    assert kept.set_index("path").loc["owner.py", "content"] == 'OWNER = "<EMAIL>"\n'


def test_sweep_without_candidates_or_with_a_bad_one_is_one_line(tmp_path: Path) -> None:
    tiny = str(REPO / "configs/tiny.yaml")
    runs = f"run.runs_dir={tmp_path / 'runs'}"
    assert_one_line_error(
        lathe("sweep", "--config", tiny, "--set", runs, "--set", "sweep.candidates=[]"),
        r"configs/tiny\.yaml: the sweep section lists no candidates; add sweep\.candidates or sweep\.grid",
    )
    assert_one_line_error(
        lathe("sweep", "--config", tiny, "--set", runs, "--set", "sweep.grid={train.model.n_heads: [0]}"),
        r"sweep candidate n_heads=0: train\.model\.n_heads: Input should be greater than 0",
    )
    assert not (tmp_path / "runs").exists()
