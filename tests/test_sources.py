"""Sources: file reading, the embedded sample, parquet schemas, The Stack, and bad input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lathe.core.errors import InputError
from lathe.data.config import EmbeddedSourceConfig, StackSourceConfig, TreeSourceConfig
from lathe.data.languages import canonical_language, language_of
from lathe.data.sources import parquet_dataframe, read_text_file, sample_embedded, stack_source, tree_source
from tests.conftest import write


def test_language_table() -> None:
    cases = {
        "a/b.py": "python",
        "x.H": "c",
        "m.hpp": "cpp",
        "w.tsx": "typescript",
        "s.sh": "shell",
        "q.sql": "sql",
        "Makefile": "makefile",
        "c.yml": "yaml",
        "go.sum": "lockfile",
        "x.bin": None,
    }
    assert {p: language_of(p) for p in cases} == cases
    assert canonical_language("C++") == "cpp" and canonical_language(None, "a.rs") == "rust"


def test_read_text_file_classifies(tmp_path: Path) -> None:
    good = write(tmp_path / "a.py", "x = 1\n")
    assert read_text_file(str(good), 6, 100) == ("x = 1\n", None)
    assert read_text_file(str(write(tmp_path / "b.py", b"\x00abc")), 4, 100) == (None, "binary")
    assert read_text_file(str(write(tmp_path / "c.py", "é".encode("latin-1"))), 1, 100) == (None, "undecodable")
    assert read_text_file(str(good), 6, 5) == (None, "oversize")
    assert read_text_file(str(tmp_path / "gone.py"), 6, 100) == (None, "unreadable")


def test_embedded_sample_is_deterministic_and_budgeted() -> None:
    cfg = EmbeddedSourceConfig(max_bytes=2_000_000, include_site_packages=False)
    a, b = sample_embedded(cfg), sample_embedded(cfg)
    assert [f.path for f in a] == [f.path for f in b]
    total = sum(f.size_bytes for f in a)
    assert total >= 2_000_000 and total - a[-1].size_bytes < 2_000_000
    assert all(f.path.startswith("stdlib/") and language_of(f.path) for f in a)
    other = sample_embedded(cfg.model_copy(update={"seed": 1}))
    assert [f.path for f in other] != [f.path for f in a]


@pytest.mark.spark
def test_tree_source_reads_and_flags_files(spark, code_tree: Path) -> None:
    df = tree_source(spark, TreeSourceConfig(paths=[str(code_tree)]), 200_000, 2, code_tree / "_staging")
    rows = {r["path"]: r for r in df.collect()}
    assert "acme/data.bin" not in rows  # unknown extension: not code, not ingested
    assert rows["acme/pkg/binary.py"]["ingest_error"] == "binary"
    assert rows["acme/pkg/latin1.py"]["ingest_error"] == "undecodable"
    assert rows["acme/pkg/huge.py"]["ingest_error"] == "oversize" and rows["acme/pkg/huge.py"]["content"] is None
    assert rows["acme/web/app.js"]["lang"] == "javascript" and rows["acme/pkg/mod0.py"]["repo"] == "acme"
    assert rows["acme/pkg/mod0.py"]["content"].startswith("\ndef func0")


def _stack_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "hexsha": ["a" * 40, "b" * 40],
            "size": [14, 30],
            "ext": ["py", "js"],
            "lang": ["Python", "JavaScript"],
            "max_stars_repo_path": ["src/a.py", "lib/b.js"],
            "max_stars_repo_name": ["org/repo", "org/web"],
            "max_stars_repo_licenses": [["MIT"], ["Apache-2.0", "MIT"]],
            "content": ["def f(): pass\n", "function g() { return 1; }\n"],
        }
    )


@pytest.mark.spark
def test_parquet_source_maps_the_stack_schema(spark, tmp_path: Path) -> None:
    _stack_frame().to_parquet(tmp_path / "stack.parquet")
    rows = {r["path"]: r for r in parquet_dataframe(spark, [str(tmp_path / "*.parquet")], "stack").collect()}
    assert rows["src/a.py"]["lang"] == "python" and rows["lib/b.js"]["lang"] == "javascript"
    assert rows["lib/b.js"]["license"] == "Apache-2.0,MIT" and rows["src/a.py"]["repo"] == "org/repo"
    assert rows["src/a.py"]["size_bytes"] == 14 and rows["src/a.py"]["source"] == "stack"


@pytest.mark.spark
def test_parquet_bad_input_is_one_clear_error(spark, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.parquet does not exist"):
        parquet_dataframe(spark, [str(tmp_path / "missing.parquet")], "p")
    pd.DataFrame({"text": ["x"], "path": ["a.py"]}).to_parquet(tmp_path / "wrong.parquet")
    with pytest.raises(InputError, match=r"wrong\.parquet lacks column\(s\) content"):
        parquet_dataframe(spark, [str(tmp_path / "wrong.parquet")], "p")
    write(tmp_path / "corrupt" / "part-0.parquet", b"PAR1 this is not parquet at all")
    with pytest.raises(InputError, match=r"cannot read parquet file .*part-0\.parquet"):
        parquet_dataframe(spark, [str(tmp_path / "corrupt")], "p")


@pytest.mark.spark
def test_stack_source_reads_a_local_copy_in_the_hub_layout(spark, tmp_path: Path) -> None:
    layout = tmp_path / "the-stack-dedup" / "data" / "python"
    layout.mkdir(parents=True)
    _stack_frame().iloc[:1].to_parquet(layout / "train-00000-of-00001.parquet")
    cfg = StackSourceConfig(dataset=str(tmp_path / "the-stack-dedup"), languages=["python"])
    rows = stack_source(spark, cfg, 1000, 2, tmp_path / "staging").collect()
    assert [(r["path"], r["lang"], r["source"]) for r in rows] == [("src/a.py", "python", "stack")]


@pytest.mark.spark
def test_stack_source_offline_is_one_clear_error(spark, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(InputError, match=r"cannot load bigcode/the-stack-dedup from the Hugging Face Hub.*HF_TOKEN"):
        stack_source(spark, StackSourceConfig(), 1000, 2, tmp_path / "staging")


def test_embedded_sample_draws_only_from_the_listed_packages(tmp_path: Path, monkeypatch) -> None:
    import sysconfig

    purelib = tmp_path / "site-packages"
    for pkg in ("alpha", "beta", "noise"):
        for i in range(20):
            write(purelib / pkg / f"m{i}.py", f"VALUE_{i} = {i!r}\n" * 50)
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path / "none"), "purelib": str(purelib)})
    cfg = EmbeddedSourceConfig(max_bytes=10_000, include_stdlib=False, packages=["alpha", "beta"])
    before = [f.path for f in sample_embedded(cfg)]
    assert before and {p.split("/")[1] for p in before} == {"alpha", "beta"}
    write(purelib / "gamma" / "new.py", "x = 1\n" * 500)  # an unrelated dependency appears
    write(purelib / "noise" / "extra.py", "y = 2\n" * 500)
    assert [f.path for f in sample_embedded(cfg)] == before
    with pytest.raises(InputError, match=r"embedded source: package\(s\) \['delta'\] are not installed in .*; remove them"):
        sample_embedded(cfg.model_copy(update={"packages": ["alpha", "delta"]}))
