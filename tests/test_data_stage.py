"""The data stage end to end: real Spark, real MLflow store, a fixture repository."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from rich.console import Console

from lathe.core.stage import MANIFEST
from lathe.pipelines.config import LatheConfig, load_config
from lathe.pipelines.runner import run_pipeline
from tests.conftest import make_code_tree

pytestmark = pytest.mark.spark

EXPECTED_DROPS = {
    "acme/pkg/binary.py": "binary",
    "acme/pkg/latin1.py": "undecodable",
    "acme/pkg/huge.py": "oversize",
    "acme/pkg/empty.py": "empty",
    "acme/web/package-lock.json": "lock_file",
    "acme/web/app.min.js": "minified",
    "acme/pkg/generated_pb2.py": "auto_generated",
    "acme/pkg/long.py": "max_line_length",
    "acme/pkg/symbols.py": "alnum_fraction",
    "acme/pkg/broken.py": "parse_error",
}
# Planted duplicates: (original, copy, reason). The survivor is the smaller id.
DUPLICATES = [
    ("acme/pkg/mod0.py", "acme/pkg/copy_exact.py", "exact_duplicate"),
    ("acme/pkg/mod1.py", "acme/pkg/copy_near.py", "near_duplicate"),
]


def tree_config(code_tree: Path, runs: Path) -> LatheConfig:
    return load_config(
        None,
        [
            f"run.runs_dir={runs}",
            "profile=fixture",
            f"data.sources=[{{kind: tree, paths: [{code_tree}], license: MIT}}]",
            "data.max_file_bytes=200000",
            "data.partitions=2",
        ],
    )


def read_parquet(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values("id").reset_index(drop=True)


@pytest.fixture(scope="module")
def first_run(spark, tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("stage")
    tree = make_code_tree(root)
    cfg = tree_config(tree, root / "runs")
    outcomes = run_pipeline(cfg, ["data"], console=Console(quiet=True))
    return root, tree, cfg, outcomes


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield mp
    mp.undo()


def test_every_record_is_kept_or_dropped_with_its_reason(first_run) -> None:
    root, tree, cfg, outcomes = first_run
    out = root / "runs" / "fixture" / "data"
    assert [o.status for o in outcomes] == ["ran"]
    manifest = json.loads((out / MANIFEST).read_text())
    ingested = pd.read_parquet(out / "ingested")
    code_files = [p for p in tree.rglob("*") if p.is_file() and p.suffix != ".bin"]
    assert manifest["counts"]["input"] == len(ingested) == len(code_files)
    kept, dropped = read_parquet(out / "kept"), read_parquet(out / "dropped")
    assert len(kept) + len(dropped) == len(ingested) == manifest["counts"]["kept"] + manifest["counts"]["dropped"]
    assert set(kept["id"]).isdisjoint(dropped["id"]) and set(kept["id"]) | set(dropped["id"]) == set(ingested["id"])
    assert list(kept.columns) == ["id", "content", "lang", "path", "repo", "license", "size_bytes", "source"]
    ids = dict(zip(ingested["path"], ingested["id"]))
    expected = dict(EXPECTED_DROPS)
    for original, copy, reason in DUPLICATES:
        survivor, loser = sorted([original, copy], key=ids.__getitem__)
        expected[loser] = reason
        assert dropped.set_index("path").loc[loser, "duplicate_of"] == ids[survivor]
        assert survivor in set(kept["path"])
    assert dict(zip(dropped["path"], dropped["reason"])) == expected


def test_pii_is_redacted_in_kept_rows(first_run) -> None:
    root, *_ = first_run
    kept = read_parquet(root / "runs" / "fixture" / "data" / "kept").set_index("path")
    text = kept.loc["acme/pkg/secrets.py", "content"]
    for placeholder in ("<EMAIL>", "<IP_ADDRESS>", "<KEY>", "<PASSWORD>"):
        assert placeholder in text
    assert "jane.doe" not in text and "8.8.4.4" not in text and "AKIAIOSFODNN7EXAMPLE" not in text
    assert "127.0.0.1" in text and "1.2.3.4" in text  # loopback and version string survive
    assert kept.loc["acme/pkg/secrets.py", "license"] == "MIT"


def test_xray_manifest_and_mlflow_child_run(first_run) -> None:
    root, *_ = first_run
    out = root / "runs" / "fixture" / "data"
    xray = json.loads((out / "xray" / "xray.json").read_text())
    assert xray["drop_reasons"]["parse_error"] == 1 and xray["redactions"]["email"] == 1
    assert {r["lang"] for r in xray["languages"]} >= {"python", "javascript", "lockfile", "markdown"}
    assert xray["duplicate_cluster_sizes"] == {"2": 2}  # JSON keys are strings
    assert (out / "xray" / "files_by_language.png").stat().st_size > 1000
    manifest = json.loads((out / MANIFEST).read_text())
    client = mlflow.MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    run = client.get_run(manifest["mlflow"]["run_id"])
    assert run.data.tags["mlflow.parentRunId"] == manifest["mlflow"]["parent_run_id"]
    assert run.data.metrics["count.input"] == manifest["counts"]["input"]
    assert run.data.metrics["redacted.password"] == 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"xray.json", "files_by_language.png", "duplicate_clusters.png", "manifest.json"} <= artifacts


def test_second_run_skips_and_forced_run_is_identical(first_run) -> None:
    root, tree, cfg, _ = first_run
    out = root / "runs" / "fixture" / "data"
    before = read_parquet(out / "kept")
    assert [o.status for o in run_pipeline(cfg, ["data"], console=Console(quiet=True))] == ["skipped"]
    assert [o.status for o in run_pipeline(cfg, ["data"], force=True, console=Console(quiet=True))] == ["ran"]
    after = read_parquet(out / "kept")
    pd.testing.assert_frame_equal(before, after)
