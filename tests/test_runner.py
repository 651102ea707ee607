"""The runner's contract: fingerprints, manifests, skip-if-done, --force, resume, MLflow runs."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from rich.console import Console

from lathe.core.registry import Registry
from lathe.core.stage import MANIFEST, Stage, StageContext, StageResult
from lathe.pipelines.config import load_config
from lathe.pipelines.runner import run_pipeline
from tests.processes import wait_for_line

pytestmark = pytest.mark.integration  # real pipelines with a real MLflow store


class Calls:
    """Records which stages ran; can make one fail once."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.fail: set[str] = set()
        self.observed = {"alias": "v1"}  # what `second` observes outside its inputs (a registry alias, say)
        self.write_elsewhere: Path | None = None  # `first` writes its output there instead of its folder
        self.skip_output = False  # `first` forgets to write its declared output
        self.seen: list[str] = []  # what `second` read from `first`


def make_registry(calls: Calls, verify=None) -> Registry[Stage]:
    def runner(name: str):
        def run(ctx: StageContext) -> StageResult:
            calls.ran.append(name)
            if name in calls.fail:
                raise RuntimeError(f"{name} failed")
            for upstream in ctx.inputs.values():
                calls.seen.append(upstream.path("out").read_text())
            target = calls.write_elsewhere if name == "first" and calls.write_elsewhere else ctx.out_dir / "out.txt"
            if not (name == "first" and calls.skip_output):
                target.write_text(f"{name}:{ctx.config.data.quality.max_line_length}:{ctx.observed}")
            (ctx.out_dir / "report.json").write_text("{}")
            return StageResult(
                counts={"input": 3, "kept": 2, "dropped": 1},
                metrics={"score": 0.5},
                artifacts=[ctx.out_dir / "report.json"],
                outputs={"out": str(target)} if target != ctx.out_dir / "out.txt" else {},
            )

        return run

    reg: Registry[Stage] = Registry("stage")
    reg.register("first")(
        Stage(
            "first",
            (),
            lambda c: c.data.quality,
            runner("first"),
            outputs={"out": "out.txt"},
            headline=lambda m: f"{m['counts']['kept']} kept",
            verify=verify,
        )
    )
    reg.register("second")(
        Stage(
            "second",
            ("first",),
            lambda c: c.data.dedup,
            runner("second"),
            outputs={"out": "out.txt", "report": "report.json"},
            observe=lambda c: dict(calls.observed),
        )
    )
    return reg


@pytest.fixture
def setup(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    calls = Calls()
    reg = make_registry(calls)

    def go(overrides: list[str] | None = None, **kw):
        cfg = load_config(None, [f"run.runs_dir={tmp_path / 'runs'}", *(overrides or [])])
        return run_pipeline(cfg, registry=reg, console=Console(quiet=True), **kw)

    return tmp_path / "runs" / "adhoc", calls, go


def test_manifest_then_skip_then_downstream_rerun_on_config_change(setup) -> None:
    out, calls, go = setup
    assert [o.status for o in go()] == ["ran", "ran"]
    manifest = json.loads((out / "first" / MANIFEST).read_text())
    assert manifest["counts"] == {"input": 3, "kept": 2, "dropped": 1}
    assert manifest["versions"]["python"] and manifest["fingerprint"]
    second = json.loads((out / "second" / MANIFEST).read_text())
    assert second["inputs"]["first"]["fingerprint"] == manifest["fingerprint"]

    assert [o.status for o in go()] == ["skipped", "skipped"]
    # `second` reads data.dedup only, but its input's fingerprint changed, so it reruns too.
    outcomes = go(["data.quality.max_line_length=5"])
    assert [o.status for o in outcomes] == ["ran", "ran"]
    # a change only `second` reads leaves `first` alone
    assert [o.status for o in go(["data.quality.max_line_length=5", "data.dedup.ngram=3"])] == ["skipped", "ran"]
    assert calls.ran == ["first", "second", "first", "second", "second"]


def test_requested_stage_brings_upstream_and_force_reruns_only_it(setup) -> None:
    out, calls, go = setup
    assert [o.name for o in go(requested=["first"])] == ["first"]
    assert [(o.name, o.status) for o in go(requested=["second"])] == [("first", "skipped"), ("second", "ran")]
    assert [(o.name, o.status) for o in go(requested=["second"], force=True)] == [("first", "skipped"), ("second", "ran")]
    assert [o.status for o in go(force=True)] == ["ran", "ran"]


def test_failed_stage_leaves_no_manifest_and_rerun_resumes_there(setup) -> None:
    out, calls, go = setup
    calls.fail = {"second"}
    with pytest.raises(RuntimeError, match="second failed"):
        go()
    assert (out / "first" / MANIFEST).is_file() and not (out / "second" / MANIFEST).exists()
    calls.fail = set()
    assert [o.status for o in go()] == ["skipped", "ran"]


def test_mlflow_parent_and_child_runs(setup, tmp_path: Path) -> None:
    out, calls, go = setup
    go()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lathe").experiment_id])
    children = {r.data.tags["mlflow.runName"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert set(children) == {"first", "second"} and len(parents) == 1
    first = children["first"]
    assert first.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert first.data.metrics["count.kept"] == 2 and first.data.metrics["score"] == 0.5
    assert first.data.params["max_line_length"] == "1000"
    manifest = json.loads((out / "first" / MANIFEST).read_text())
    assert manifest["mlflow"]["run_id"] == first.info.run_id
    artifacts = [a.path for a in client.list_artifacts(first.info.run_id)]
    assert "report.json" in artifacts and "manifest.json" in artifacts


def test_unknown_stage_lists_the_valid_ones(setup) -> None:
    _, _, go = setup
    from lathe.core.errors import LatheError

    with pytest.raises(LatheError, match="unknown stage 'thrid'; valid: first, second"):
        go(requested=["thrid"])


def test_each_pipeline_uses_its_own_store_in_one_process(tmp_path: Path, monkeypatch) -> None:
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; a second pipeline must not inherit it.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("a", "b"):
        cfg = load_config(None, [f"run.runs_dir={tmp_path / name}"])
        run_pipeline(cfg, registry=make_registry(Calls()), console=Console(quiet=True))
        client = mlflow.MlflowClient(f"sqlite:///{tmp_path / name / 'mlflow.db'}")
        assert len(client.search_runs([client.get_experiment_by_name("lathe").experiment_id])) == 3
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'chosen.db'}")
    run_pipeline(
        load_config(None, [f"run.runs_dir={tmp_path / 'c'}"]), registry=make_registry(Calls()), console=Console(quiet=True)
    )
    assert (tmp_path / "chosen.db").is_file() and not (tmp_path / "c" / "mlflow.db").exists()


def test_outputs_are_declared_recorded_and_read_by_name(setup, tmp_path: Path) -> None:
    out, calls, go = setup
    go()
    first = json.loads((out / "first" / MANIFEST).read_text())
    assert first["outputs"] == {"out": str(out / "first" / "out.txt")}
    assert calls.seen == ["first:1000:{}"]  # `second` read `first`'s output through the contract
    # an output written elsewhere (an object store, a shared folder) is recorded where it is, and read from there
    calls.write_elsewhere = tmp_path / "elsewhere.txt"
    go(["data.quality.max_line_length=7"])
    assert json.loads((out / "first" / MANIFEST).read_text())["outputs"] == {"out": str(tmp_path / "elsewhere.txt")}
    assert calls.seen[-1] == "first:7:{}"


def test_a_declared_output_that_was_not_written_fails_the_stage(setup) -> None:
    out, calls, go = setup
    calls.skip_output = True
    with pytest.raises(ValueError, match=r"stage 'first' did not write its declared output\(s\): out"):
        go(requested=["first"])
    assert not (out / "first" / MANIFEST).exists()


def test_what_a_stage_observes_is_fingerprinted_recorded_and_handed_to_it(setup) -> None:
    out, calls, go = setup
    assert [o.status for o in go()] == ["ran", "ran"]
    assert [o.status for o in go()] == ["skipped", "skipped"]
    calls.observed = {"alias": "v2"}  # the world moved: `second` reruns, `first` does not
    assert [o.status for o in go()] == ["skipped", "ran"]
    second = json.loads((out / "second" / MANIFEST).read_text())
    assert second["observed"] == {"alias": "v2"} and (out / "second" / "out.txt").read_text().endswith("{'alias': 'v2'}")
    assert [o.status for o in go()] == ["skipped", "skipped"]


def test_summary_asks_each_finished_stage_for_its_headline(setup) -> None:
    from lathe.pipelines.summary import print_summary, summary_rows

    out, calls, go = setup
    reg = make_registry(calls)
    assert summary_rows(out, reg) == []
    go()
    # `second` has no headline: only `first` has a row, pointing at its first declared output
    assert summary_rows(out, reg) == [("first", "2 kept", str(out / "first" / "out.txt"))]
    console = Console(record=True, width=200)
    print_summary(out, console, [("registry", "production -> v1", "lathe-code")], reg)
    text = console.export_text()
    assert "2 kept" in text and "production -> v1" in text


def test_one_run_per_profile_and_a_dead_holder_leaves_no_stale_lock(setup) -> None:
    import subprocess
    import sys

    from lathe.core.errors import LatheError

    out, calls, go = setup
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\nfrom lathe.pipelines.runner import profile_lock\n"
            "with profile_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(120)\n",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert (wait_for_line(holder, "held", timeout_s=120) or "").strip() == "held"
        with pytest.raises(LatheError, match=rf"profile adhoc is being run by pid {holder.pid} on .* since .*; wait for it"):
            go()
        assert calls.ran == []  # refused before any stage
    finally:
        holder.kill()  # kill -9: the kernel releases its lock
        holder.wait()
    assert [o.status for o in go()] == ["ran", "ran"]


def test_runs_left_running_by_a_killed_run_are_marked_killed(setup, tmp_path: Path) -> None:
    out, calls, go = setup
    go(requested=["first"])  # creates the store and the experiment
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lathe").experiment_id
    orphan = client.create_run(experiment, tags={"lathe.profile": "adhoc"})  # as a kill -9 mid-stage leaves it
    other = client.create_run(experiment, tags={"lathe.profile": "another"})  # another profile's: not ours to close
    go()
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert client.get_run(other.info.run_id).info.status == "RUNNING"
    assert {r.info.status for r in client.search_runs([experiment], "tags.`lathe.profile` = 'adhoc'")} == {"FINISHED", "KILLED"}


def test_a_done_stage_whose_external_outputs_are_gone_reruns(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    gone = {"now": False}
    reg = make_registry(Calls(), verify=lambda manifest, inputs: "its registered entry is gone" if gone["now"] else None)
    cfg = load_config(None, [f"run.runs_dir={tmp_path / 'runs'}"])

    def go() -> list[str]:
        return [o.status for o in run_pipeline(cfg, registry=reg, console=Console(quiet=True))]

    assert go() == ["ran", "ran"] and go() == ["skipped", "skipped"]
    gone["now"] = True
    assert go() == ["ran", "skipped"]  # same fingerprint, but what it made outside its folder must be remade


def test_optional_stages_run_only_when_named_or_needed() -> None:
    from lathe.pipelines.runner import select_stages

    default = [s.name for s in select_stages(None)]
    assert default == ["data", "tokenizer", "shards", "train", "eval", "package", "canary"]  # `make all`: no post-training
    assert [s.name for s in select_stages(["sft_eval"])] == ["data", "pairs", "sft", "sft_eval"]
    assert [s.name for s in select_stages(["dpo"])] == ["data", "pairs", "preferences", "dpo"]


def test_a_new_sqlite_store_starts_from_the_migrated_template(tmp_path: Path, monkeypatch) -> None:
    import sqlite3

    from lathe.core.tracking import seed_store, setup_tracking

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = setup_tracking(tmp_path / "runs", None, "lathe")
    assert list((tmp_path / "cache" / "lathe").glob("mlflow-*.db"))  # made once, by MLflow itself
    client = mlflow.MlflowClient(uri)
    default = client.get_experiment("0")
    assert default.name == "Default" and default.artifact_location == str((tmp_path / "runs" / "mlartifacts" / "0").resolve())
    with mlflow.start_run(experiment_id=client.get_experiment_by_name("lathe").experiment_id) as run:
        mlflow.log_metric("loss", 1.5)
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 1.5}
    # an existing store is never replaced: its runs stay
    seed_store(uri)
    with sqlite3.connect(uri.removeprefix("sqlite:///")) as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (1,)


def test_spark_driver_maps_the_class_data_sharing_archive_when_there_is_one(tmp_path: Path, monkeypatch) -> None:
    from lathe.core import spark as core_spark

    archive = tmp_path / "spark-driver.jsa"
    monkeypatch.setattr(core_spark, "cds_archive", lambda: archive)
    assert "SharedArchiveFile" not in core_spark.driver_java_options()
    archive.write_bytes(b"")
    assert f"-XX:SharedArchiveFile={archive}" in core_spark.driver_java_options()
    dump = core_spark.driver_java_options(tmp_path / "new.jsa")
    assert f"-XX:ArchiveClassesAtExit={tmp_path / 'new.jsa'}" in dump and "SharedArchiveFile" not in dump
    assert "-Dlog4j.configurationFile=" in dump  # the log config rides along either way


def test_the_suites_spark_driver_runs_on_the_archive_make_setup_wrote(spark) -> None:
    from lathe.core.spark import cds_archive

    assert cds_archive().is_file(), f"{cds_archive()} is missing: `make setup` writes it"
    bean = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    assert f"-XX:SharedArchiveFile={cds_archive()}" in list(bean.getInputArguments())
    # a standalone cluster's executors on this machine are told to map it too
    assert f"-XX:SharedArchiveFile={cds_archive()}" in spark.conf.get("spark.executor.extraJavaOptions")
