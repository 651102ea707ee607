"""The data stage end to end: real Spark, real MLflow store, a fixture repository."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from rich.console import Console

from lathe.core.stage import MANIFEST
from lathe.pipelines.config import LatheConfig, load_config
from lathe.pipelines.runner import run_pipeline
from tests.conftest import CANARIES, make_code_tree, only_stream
from tests.spark_cluster import standalone_cluster

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


def tree_overrides(code_tree: Path, runs: Path) -> list[str]:
    """The overrides of :func:`tree_config`: the fixture profile on the `acme` tree."""
    return [
        f"run.runs_dir={runs}",
        "profile=fixture",
        f"data.sources=[{{kind: tree, paths: [{code_tree}], license: MIT}}]",
        "data.max_file_bytes=200000",
        "data.partitions=2",
    ]


def tree_config(code_tree: Path, runs: Path) -> LatheConfig:
    return load_config(None, tree_overrides(code_tree, runs))


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


def _clean_set(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    kept = read_parquet(out / "kept")[["id", "content", "path"]]
    dropped = read_parquet(out / "dropped")[["id", "path", "reason", "duplicate_of"]]
    return kept, dropped


def test_a_rerun_cleans_only_what_changed_and_equals_a_full_rebuild(spark, tmp_path: Path, monkeypatch) -> None:
    from tests.conftest import PY_FUNC, write

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tree = make_code_tree(tmp_path)
    cfg = tree_config(tree, tmp_path / "runs")
    out = tmp_path / "runs" / "fixture" / "data"
    quiet = Console(quiet=True)
    assert [o.status for o in run_pipeline(cfg, ["data"], console=quiet)] == ["ran"]
    first = json.loads((out / MANIFEST).read_text())
    assert first["counts"]["processed"] == first["counts"]["input"] and first["observed"]["snapshot"]

    # Day 2: two new files (one a near copy of a kept file), one changed, one deleted.
    write(tree / "pkg/new_module.py", PY_FUNC.format(name="fresh", offset=42))
    near = (tree / "pkg/mod2.py").read_text().replace("keep the positive ones", "keep just the positive ones")
    write(tree / "pkg/mod2_copy.py", near)
    write(tree / "web/app.js", (tree / "web/app.js").read_text() + "// changed\n")
    (tree / "pkg/empty.py").unlink()
    outcome = run_pipeline(cfg, ["data"], console=quiet)[0]
    assert outcome.status == "ran" and outcome.manifest["observed"]["snapshot"] != first["observed"]["snapshot"]
    counts = outcome.manifest["counts"]
    assert counts["processed"] == 3  # the new and changed files; everything else was reused
    assert {k: counts[f"files.{k}"] for k in ("new", "changed", "deleted")} == {"new": 2, "changed": 1, "deleted": 1}
    assert counts["files.unchanged"] == first["counts"]["input"] - 2
    delta = outcome.manifest["details"]["delta"]
    assert delta["kept"] + sum(delta["dropped"].values()) == 3
    # the near copy joined mod2's cluster: one of the two (the larger id) is dropped, whichever was new
    assert outcome.manifest["metrics"]["dropped.near_duplicate"] == first["metrics"]["dropped.near_duplicate"] + 1
    dropped_now = read_parquet(out / "dropped").set_index("path")["reason"]
    assert [dropped_now.get(p) for p in ("acme/pkg/mod2.py", "acme/pkg/mod2_copy.py")].count("near_duplicate") == 1
    xray = json.loads((out / "xray" / "xray.json").read_text())
    assert xray["delta"]["files"]["new"] == 2 and xray["input_files"] == counts["input"]
    assert not (out.parent / "data.previous").exists()  # carried over, then removed

    # Nothing changed: the snapshot matches and the stage skips.
    assert [o.status for o in run_pipeline(cfg, ["data"], console=quiet)] == ["skipped"]
    incremental = _clean_set(out)
    # A change of cleaning config cannot reuse the pool: every file of the same final snapshot is cleaned again,
    # from scratch, and gives the clean set the incremental run made. The limit moves where no file sits
    # (huge.py, 240 kB, stays oversize), so the rebuild is of the same config in effect.
    changed = load_config(None, [*tree_overrides(tree, tmp_path / "runs"), "data.max_file_bytes=220000"])
    again = run_pipeline(changed, ["data"], console=quiet)[0]
    assert again.status == "ran" and again.manifest["counts"]["processed"] == again.manifest["counts"]["input"]
    rebuilt = _clean_set(out)
    pd.testing.assert_frame_equal(incremental[0], rebuilt[0])
    pd.testing.assert_frame_equal(incremental[1], rebuilt[1])
    assert "acme/pkg/empty.py" not in set(incremental[1]["path"])  # the deleted file left the set


def test_git_tree_snapshot_follows_commits_and_edits_and_ignores_ignored_files(tmp_path: Path) -> None:
    import subprocess

    from lathe.data.config import TreeSourceConfig
    from lathe.data.snapshot import tree_snapshot
    from lathe.data.sources import git_files

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.py").write_text("x = 1\n")
    (repo / ".gitignore").write_text("build/\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    cfg = TreeSourceConfig(paths=[str(repo)])
    snaps = [tree_snapshot(cfg)]
    assert snaps[0]["repos"][0]["head"] and snaps[0]["repos"][0]["dirty"] == ""
    (repo / "build").mkdir()
    (repo / "build" / "gen.py").write_text("y = 2\n")  # ignored: not the repository's code
    assert tree_snapshot(cfg) == snaps[0]
    assert [f.path for f in git_files(repo, "repo/", "repo")] == ["repo/a.py"]
    (repo / "a.py").write_text("x = 2\n")
    snaps.append(tree_snapshot(cfg))
    (repo / "a.py").write_text("x = 333\n")  # edited again: still " M", but a new snapshot
    snaps.append(tree_snapshot(cfg))
    subprocess.run([*git, "commit", "-qam", "two"], check=True)
    snaps.append(tree_snapshot(cfg))
    assert len({json.dumps(s, sort_keys=True) for s in snaps}) == 4
    assert snaps[-1]["repos"][0]["head"] != snaps[0]["repos"][0]["head"] and snaps[-1]["repos"][0]["dirty"] == ""
    # A new directory not committed yet is snapshotted by its files; an ignored one is a plain tree.
    (repo / "fresh").mkdir()
    (repo / "fresh" / "b.py").write_text("z = 3\n")
    fresh = tree_snapshot(TreeSourceConfig(paths=[str(repo / "fresh")]))["repos"][0]
    assert fresh["tree"] == "" and fresh["dirty"]
    assert [f.path for f in git_files(repo / "fresh", "fresh/", "fresh")] == ["fresh/b.py"]
    ignored = tree_snapshot(TreeSourceConfig(paths=[str(repo / "build")]))["repos"][0]
    assert "listing" in ignored and "head" not in ignored


def test_a_source_as_of_a_past_time_is_read_as_it_was_then(spark, tmp_path: Path) -> None:
    """A scheduled run's data interval end: a git tree at its last commit by then, a plain
    directory without the files modified after it."""
    import os
    import subprocess
    from datetime import datetime

    from lathe.data.config import TreeSourceConfig
    from lathe.data.snapshot import tree_snapshot
    from lathe.data.sources import tree_source

    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)

    def commit(day: int, files: dict[str, str]) -> None:
        for name, text in files.items():
            (repo / "pkg" / name).write_text(text)
        stamp = f"2026-01-0{day}T12:00:00+00:00"
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run(
            [*git, "commit", "-qm", f"day {day}"],
            check=True,
            env={**os.environ, "GIT_COMMITTER_DATE": stamp, "GIT_AUTHOR_DATE": stamp},
        )

    commit(1, {"a.py": "A = 1\n"})
    commit(2, {"a.py": "A = 2\n", "b.py": "B = 2\n"})
    (repo / "pkg" / "c.py").write_text("C = 3\n")  # uncommitted: no scheduled run reads it
    cfg = TreeSourceConfig(paths=[str(repo / "pkg")], repo="pkg")
    day = [datetime(2026, 1, d, tzinfo=UTC) for d in (1, 2, 3)]

    def files(as_of: datetime | None) -> dict[str, str]:
        rows = tree_source(spark, cfg, 10_000, 2, tmp_path / f"staging-{as_of and as_of.day}", as_of).collect()
        return {r["path"]: r["content"] for r in rows}

    assert files(day[0]) == {}  # before the first commit
    assert files(day[0].replace(hour=13)) == {"pkg/a.py": "A = 1\n"}
    assert files(day[2]) == {"pkg/a.py": "A = 2\n", "pkg/b.py": "B = 2\n"}
    assert files(None) == {"pkg/a.py": "A = 2\n", "pkg/b.py": "B = 2\n", "pkg/c.py": "C = 3\n"}  # the work tree now
    snaps = [tree_snapshot(cfg, d)["repos"][0] for d in (day[0].replace(hour=13), day[2], day[2].replace(day=9))]
    assert snaps[1] == snaps[2] != snaps[0] and snaps[1]["dirty"] == ""  # nothing committed after day 2

    plain = tmp_path / "plain"
    plain.mkdir()
    for name, day_of in (("old.py", 1), ("new.py", 3)):
        (plain / name).write_text("x = 1\n")
        os.utime(plain / name, (day[day_of - 1].timestamp(),) * 2)
    listing = TreeSourceConfig(paths=[str(plain)], repo="plain")
    rows = tree_source(spark, listing, 10_000, 2, tmp_path / "staging-plain", day[1]).collect()
    assert [r["path"] for r in rows] == ["plain/old.py"]
    assert tree_snapshot(listing, day[1]) != tree_snapshot(listing, day[2])


def test_a_source_that_yields_no_kept_file_fails_the_stage_in_one_line(spark, tmp_path: Path, monkeypatch) -> None:
    from lathe.core.errors import InputError
    from tests.conftest import write

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tree = tmp_path / "binaries"
    write(tree / "blob.py", b"\x00\x01 not text")
    cfg = tree_config(tree, tmp_path / "runs")
    with pytest.raises(InputError, match=r"source tree yielded no kept file \(1 in\); fix data.sources"):
        run_pipeline(cfg, ["data"], console=Console(quiet=True))
    assert not (tmp_path / "runs" / "fixture" / "data" / MANIFEST).exists()
    warned = load_config(
        None,
        [
            f"run.runs_dir={tmp_path / 'runs'}",
            "profile=fixture",
            "data.on_empty_source=warn",
            f"data.sources=[{{kind: tree, paths: [{tree}]}}]",
            "data.partitions=2",
        ],
    )
    assert run_pipeline(warned, ["data"], console=Console(quiet=True))[0].manifest["counts"]["kept"] == 0


def test_a_standalone_cluster_cleans_exactly_as_local_mode(first_run, tmp_path: Path) -> None:
    """The data stage through the CLI on a real Spark standalone cluster (a master and two one-core workers on
    loopback): the same kept and dropped records, each drop with the same reason, and the same counts as the
    module's `local[2]` run of the same config on the `acme` tree (a drop of every kind, exact and near copies)."""
    root, tree, _, _ = first_run
    runs, config = tmp_path / "runs", tmp_path / "empty.yaml"
    config.write_text("{}\n")  # with the overrides below: the same config as the module's run
    with standalone_cluster(tmp_path / "cluster", workers=2) as master:
        sets = [
            *tree_overrides(tree, runs),
            f"spark.master={master}",
            "spark.conf={spark.executor.memory: 768m, spark.cores.max: '2'}",
        ]
        done = subprocess.run(
            [
                str(Path(sys.executable).with_name("lathe")),
                "run",
                "data",
                "--config",
                str(config),
                *(a for s in sets for a in ("--set", s)),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    ran = [w for w in (tmp_path / "cluster").glob("worker-*") if any(w.glob("app-*/*/stderr"))]
    assert len(ran) == 2  # both workers ran an executor of the stage's application
    cluster, local = _clean_set(runs / "fixture" / "data"), _clean_set(root / "runs" / "fixture" / "data")
    assert len(cluster[0]) >= 5 and set(cluster[1]["reason"]) >= set(EXPECTED_DROPS.values())
    pd.testing.assert_frame_equal(cluster[0], local[0])
    pd.testing.assert_frame_equal(cluster[1], local[1])
    counts = [
        json.loads((d / MANIFEST).read_text())["counts"] for d in (runs / "fixture" / "data", root / "runs" / "fixture" / "data")
    ]
    assert counts[0] == counts[1]


# The credentials planted in tests/data/canaries (each as written there).
PLANTED = [
    "AKIAQ7LCNRY2X4TZ9W3M",
    "q8Rz1vK0tLmN3bX7cY5wA2dF6gH9jP4sE0uI1oTb",
    "Vn7kQ2zXpL9wX4mR",
    "ghp_4fHq9ZtL2mXc8VbN1pRs7KdY3wJe6TuA0gQi",
    "sk_live_51HqLcnRyT0k3nZ9xQ2vB7mW4pD8sF6gJ1kL3zX5c",
    "xoxb-2210598671-3826619854261-Zq8LtR4mWc7VnB2pKs9Dy6Hf",
    "9f8Kq2LmZ7xR4tVb1NcW6pYs3JdH0gUe5aTi8oQn",
    "Tz4!mQ8rLw2#Xn6v",
    "SG.hL3qN8vR2tXw.Kp7mZc4Yb9Fd1Gs6Jn0Qe5Ua3Ti8Oy2Lr4Hx7Vw1Mb",
]


def leaked(text: str) -> list[str]:
    """The planted credentials any 8-character piece of which is in ``text``: a FIM example cuts a document
    at random characters and reorders the pieces, so a whole secret need not be contiguous in a shard."""
    return [s for s in PLANTED if any(s[i : i + 8] in text for i in range(len(s) - 7))]


def test_planted_credentials_reach_no_kept_row_shard_vocabulary_or_xray(shards_pipeline) -> None:
    from streaming import StreamingDataset

    from lathe.tokenizer.special import PAD
    from lathe.tokenizer.vocab import load_tokenizer

    profile_dir, _, _ = shards_pipeline
    assert len(leaked("".join(f.read_text() for f in CANARIES.rglob("*.*")))) == len(PLANTED)  # the check sees them
    kept = pd.read_parquet(profile_dir / "data" / "kept", columns=["path", "content"]).set_index("path")["content"]
    canaries = kept[kept.index.str.startswith("canaries/billing/")]
    # every canary file is kept, redacted: the secrets are gone, not the files
    assert sorted(canaries.index) == [
        "canaries/billing/deploy.yaml",
        "canaries/billing/notify.js",
        "canaries/billing/settings.py",
    ]
    assert all("<KEY>" in text for text in canaries) and "<PASSWORD>" in canaries["canaries/billing/deploy.yaml"]
    assert leaked("".join(kept)) == []
    pool = pd.read_parquet(profile_dir / "data" / "pool", columns=["content"])["content"].dropna()
    assert leaked("".join(pool)) == []
    # every training and validation sample, decoded as the model reads it
    tok = load_tokenizer(profile_dir / "tokenizer")
    pad = tok.token_to_id(PAD)
    decoded = []
    for split in ("train", "val"):
        ds = StreamingDataset(local=str(only_stream(profile_dir) / split), shuffle=False, batch_size=1)
        decoded += [tok.decode([int(t) for t in ds[i]["tokens"] if t != pad], skip_special_tokens=False) for i in range(len(ds))]
    shards = "".join(decoded)
    assert "invoice_total" in shards or "formatAmount" in shards  # the canary files did reach the shards
    assert leaked(shards) == []
    assert leaked((profile_dir / "tokenizer" / "tokenizer.json").read_text()) == []
    xray = [
        f.read_text(errors="replace")
        for f in (profile_dir / "data" / "xray").rglob("*")
        if f.suffix in {".json", ".md", ".html", ".txt", ".csv"}
    ]
    assert xray and leaked("".join(xray)) == []
