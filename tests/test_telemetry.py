"""The telemetry store on SQLite and on a real PostgreSQL server, the A/B report and the preference export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lathe.serving.ab import compare, route, tally, two_proportion_p, wilson
from lathe.serving.config import AbConfig
from lathe.serving.server import free_port
from lathe.serving.telemetry import Served, TelemetryStore, UnknownCompletion, export_preferences, language_of

pytestmark = pytest.mark.integration  # a real PostgreSQL server, and the CLI over a real store

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server (Debian's `postgresql`, installed by `make setup`) in a temporary directory."""
    assert PG_BIN is not None, "PostgreSQL is not installed; run `make setup` (it installs Debian's postgresql)"
    data = Path(tempfile.mkdtemp(prefix="lathe-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(data, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [*as_postgres, str(PG_BIN / "initdb"), "-D", str(data / "db"), "-U", "lathe", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_postgres,
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data / "db"),
            "-l",
            str(data / "log"),
            "-w",
            "start",
            "-o",
            f"-p {port} -k {data} -h 127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://lathe@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop"], capture_output=True
        )
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'telemetry.db'}"
    from sqlalchemy import create_engine

    from lathe.serving.telemetry import Base

    url = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    Base.metadata.drop_all(engine)  # each test starts from an empty schema
    engine.dispose()
    return url


def served(id: str, track: str, texts: list[str], prompt: str = "def f(", language: str = "python", version: str = "3") -> Served:
    return Served(
        id, "u", track, "lathe-code", version, language, prompt, "\n", texts, ["stop"] * len(texts), 5, 7, 0.1, 0.01, {}
    )


def test_store_records_events_and_survives_reopening(store_url: str) -> None:
    store = TelemetryStore(store_url)
    store.record(served("c1", "production", ["a", "b"]))
    labels = store.event("c1", 1, "select", 1200)
    assert (labels.track, labels.model_version, labels.language) == ("production", "3", "python")
    with pytest.raises(UnknownCompletion, match="completion_id 'c9' is unknown"):
        store.event("c9", 0, "view", None)
    with pytest.raises(UnknownCompletion, match="choice_index 2 is out of range"):
        store.event("c1", 2, "view", None)
    store.engine.dispose()
    again = TelemetryStore(store_url)  # a restarted gateway sees everything
    again.event("c1", 0, "dismiss", None)
    outcomes = sorted(again.outcomes(), key=lambda o: o["choice_index"])
    assert [(o["choice_index"], o["accepted"], o["dismissed"]) for o in outcomes] == [(0, False, True), (1, True, False)]


def test_preference_export_pairs_chosen_with_rejected(store_url: str, tmp_path: Path) -> None:
    store = TelemetryStore(store_url)
    store.record(served("c1", "production", ["good()", "bad()"]))
    store.record(served("c2", "production", ["alone()"], prompt="class A:"))
    for completion, index, kind in (("c1", 0, "select"), ("c1", 1, "dismiss"), ("c2", 0, "dismiss")):
        store.event(completion, index, kind, None)
    out = tmp_path / "feedback"
    assert export_preferences(store, out) == {"pairs": 1, "labelled": 3}
    [pair] = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert pair == {"prompt": "def f(", "suffix": "\n", "chosen": "good()", "rejected": "bad()", "language": "python"}
    labelled = [json.loads(line) for line in (out / "labelled.jsonl").read_text().splitlines()]
    assert sorted((r["completion"], r["label"]) for r in labelled) == [("alone()", False), ("bad()", False), ("good()", True)]
    private = TelemetryStore(store_url, store_text=False)  # without stored text nothing can be exported
    private.record(served("c3", "production", ["x"]))
    private.event("c3", 0, "select", None)
    assert export_preferences(private, tmp_path / "again")["labelled"] == 3


def test_a_bad_store_url_is_one_line() -> None:
    from lathe.core.errors import InputError

    with pytest.raises(
        InputError, match="telemetry store postgresql\\+psycopg://nobody:\\*\\*\\*@127.0.0.1:1/x cannot be opened"
    ):
        TelemetryStore("postgresql+psycopg://nobody:secret@127.0.0.1:1/x")


def test_routing_is_stable_and_follows_the_share() -> None:
    ab = AbConfig(staff_users=["alice"], candidate_share=0.3)
    users = [f"user{i}" for i in range(4000)]
    tracks = [route(u, ab) for u in users]
    assert route("alice", ab) == "staff" and tracks == [route(u, ab) for u in users]
    assert 0.27 < tracks.count("candidate") / len(users) < 0.33
    assert {route(u, AbConfig()) for u in users} == {"production"}
    reshuffled = [route(u, ab.model_copy(update={"salt": "other"})) for u in users]
    assert reshuffled != tracks  # a new salt moves users between arms


def test_statistics() -> None:
    lo, hi = wilson(20, 100)
    assert 0.13 < lo < 0.14 and 0.28 < hi < 0.29  # the textbook Wilson interval for 20/100
    assert two_proportion_p(200, 1000, 260, 1000) < 0.01 and two_proportion_p(20, 100, 21, 100) > 0.5
    assert (
        language_of(None, "src/App.tsx") == "typescript"
        and language_of("Go", None) == "go"
        and language_of(None, None) == "unknown"
    )


def outcomes(track: str, shown: int, accepted: int, language: str = "python") -> list[dict]:
    return [{"track": track, "model_version": "3", "language": language, "accepted": i < accepted} for i in range(shown)]


def test_ab_verdicts() -> None:
    ahead = compare(tally(outcomes("production", 1000, 200) + outcomes("candidate", 1000, 260)), 100, 0.05)
    assert ahead[0].language == "all" and ahead[0].verdict.startswith("candidate is ahead: 26.0% vs 20.0% accepted")
    assert [c.language for c in ahead] == ["all", "python"]
    early = compare(tally(outcomes("production", 1000, 200) + outcomes("candidate", 40, 20)), 100, 0.05)
    assert early[0].verdict.startswith("not enough data yet: candidate has 40 shown")
    even = compare(tally(outcomes("production", 500, 100) + outcomes("candidate", 500, 104)), 100, 0.05)
    assert even[0].verdict.startswith("no significant difference")


def test_lathe_ab_report_and_feedback_export(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    store = TelemetryStore(url)
    for track, shown, accepted in (("production", 300, 60), ("candidate", 300, 105)):
        for i in range(shown):
            store.record(served(f"{track}{i}", track, ["x"], prompt=f"p{i}"))
            store.event(f"{track}{i}", 0, "view", None)
            store.event(f"{track}{i}", 0, "select" if i < accepted else "dismiss", None)
    lathe = [sys.executable, "-m", "lathe.pipelines.cli"]
    report = subprocess.run([*lathe, "ab", "report", "--url", url], capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    assert "candidate is ahead: 35.0% vs 20.0% accepted" in report.stdout and "production" in report.stdout
    export = subprocess.run(
        [*lathe, "feedback", "export", "--url", url, "--output", str(tmp_path / "fb")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert export.returncode == 0 and "600 labelled completion(s)" in export.stdout
    empty = subprocess.run(
        [*lathe, "ab", "report", "--url", f"sqlite:///{tmp_path / 'empty.db'}"], capture_output=True, text=True, timeout=120
    )
    assert empty.returncode == 2 and "no editor events" in empty.stderr and empty.stderr.count("\n") == 1
