"""Shared fixtures: one real local SparkSession per test session, small fixture corpora."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from lathe.core.spark import SparkConfig
from tests.served import engine, hf_model, int8_model, repository, server  # noqa: F401 - session fixtures shared by serving and gateway tests

REPO = Path(__file__).resolve().parents[1]
CANARIES = REPO / "tests" / "data" / "canaries"


# Session fixtures that start the real thing: a test using one is an integration test (`make check` leaves it to
# `make test`), as is every test marked `integration` by hand (one that trains, serves or runs a pipeline itself).
INTEGRATION_FIXTURES = {"spark", "shards_pipeline", "hf_model", "engine", "int8_model", "repository", "server"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the integration tests; the Airflow backfill's test runs last: its run starts in the background at
    collection (tests/backfill.py), and the rest of the suite runs while it does."""
    from tests.backfill import TEST_ID

    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: item.nodeid == TEST_ID)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the backfill now if the session will run its test (after -k and -m selected)."""
    from tests.backfill import TEST_ID, start

    if not session.config.option.collectonly and any(item.nodeid == TEST_ID for item in session.items):
        start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests.backfill import stop

    stop()


@pytest.fixture
def private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's temp folder, apart from the shared one: Streaming's lock files land here, and the
    ones concurrent processes (the background Airflow backfill) make in the shared folder do not count."""
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    return private


@pytest.fixture(scope="session")
def spark():
    """A real local Spark (starting one takes ~13 s on 2 cores, so it is shared)."""
    from lathe.core.spark import spark_session

    session = spark_session(SparkConfig(master="local[2]", driver_memory="2g", shuffle_partitions=4), "lathe-tests")
    yield session
    session.stop()


SMALL_PIPELINE = [
    "profile=small",
    # the standard library, and the canary repository: credentials planted in Python, JavaScript and YAML
    f"data.sources=[{{kind: embedded, max_bytes: 1500000, include_site_packages: false}}, {{kind: tree, paths: [{CANARIES}], license: MIT}}]",
    "data.partitions=2",
    "tokenizer.vocab_size=512",
    "tokenizer.reserved_sentinels=4",
    "tokenizer.heldout_fraction=0.1",
    "tokenizer.ablation_vocab_sizes=[320, 384]",
    "shards.seq_len=128",
    "shards.partitions=2",
    "shards.val_fraction=0.1",
]


@pytest.fixture(scope="session")
def shards_pipeline(spark, tmp_path_factory):
    """data -> tokenizer -> shards once per test session on 1.5 MB of the standard library.

    Returns (profile dir, config, outcomes).
    """
    from rich.console import Console

    from lathe.pipelines.config import load_config
    from lathe.pipelines.runner import run_pipeline

    root = tmp_path_factory.mktemp("pipeline")
    cfg = load_config(None, [f"run.runs_dir={root / 'runs'}", *SMALL_PIPELINE])
    outcomes = run_pipeline(cfg, ["shards"], console=Console(quiet=True))
    return root / "runs" / "small", cfg, outcomes


def only_stream(profile_dir: Path) -> Path:
    """The one stream a first shards run writes: mds/<stream>/ holding train/, val/ and docs/."""
    (stream,) = [p for p in (profile_dir / "shards" / "mds").iterdir() if p.is_dir()]
    return stream


PY_FUNC = '''
def {name}(values, scale=2):
    """Scale every value and keep the positive ones."""
    result = []
    for value in values:
        scaled = value * scale + {offset}
        if scaled > 0:
            result.append(scaled)
    return result


def summary_{name}(values):
    total = sum(values)
    count = len(values)
    return {{"total": total, "count": count, "mean": total / max(count, 1)}}
'''


def write(path: Path, text: str | bytes) -> Path:
    """Write a fixture file, creating its directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture
def code_tree(tmp_path: Path) -> Path:
    """A small repository with every kind of file the data stage must keep or drop."""
    return make_code_tree(tmp_path)


def make_code_tree(parent: Path) -> Path:
    """Write the `acme` fixture repository under ``parent`` and return its root."""
    root = parent / "acme"
    for i in range(6):  # distinct good files
        write(root / f"pkg/mod{i}.py", PY_FUNC.format(name=f"func{i}", offset=i) + f"\nCONSTANT_{i} = {i * 7}\n")
    write(root / "pkg/copy_exact.py", (root / "pkg/mod0.py").read_text() + "   \n")  # exact dup (trailing ws)
    near = (root / "pkg/mod1.py").read_text().replace("keep the positive ones", "keep only the positive ones")
    write(root / "pkg/copy_near.py", near)  # near duplicate of mod1
    write(root / "pkg/generated_pb2.py", "# Generated by the protocol buffer compiler.  DO NOT EDIT!\nX = 1\n")
    write(root / "pkg/broken.py", "def broken(:\n    return 1\n")
    write(root / "pkg/empty.py", "   \n")
    write(root / "pkg/long.py", "x = '" + "a" * 1200 + "'\n")
    write(root / "pkg/symbols.py", "#" * 40 + "\n" + "= - + * / " * 20 + "\nx = 1\n")
    write(root / "pkg/binary.py", b"\x00\x01\x02 not text")
    write(root / "pkg/latin1.py", "caf\xe9 = 1\n".encode("latin-1"))
    write(root / "pkg/huge.py", "y = 1\n" * 40_000)  # 240 kB: oversize at max_file_bytes=200000
    write(root / "web/app.min.js", "var a=1;" * 10)
    write(root / "web/app.js", "function add(a, b) {\n  return a + b;\n}\nmodule.exports = { add };\n")
    write(root / "web/package-lock.json", '{\n  "name": "acme",\n  "lockfileVersion": 3\n}\n')
    write(
        root / "pkg/secrets.py",
        (
            'ADMIN = "jane.doe@acme-corp.com"\n'
            'SERVER = "8.8.4.4"\n'
            'LOCAL = "127.0.0.1"\n'
            'AWS_KEY = "AKIAIOSFODNN7EXAMPLE"\n'
            'DB_URL = "postgres://admin:s3cr3tPass9@db.acme-corp.com/prod"\n'
            '__version__ = "1.2.3.4"\n'
        ),
    )
    write(root / "README.md", "# acme\n\nA small package used in tests.\n")
    write(root / "data.bin", b"\x00" * 10)  # unknown extension: not a code file, not ingested
    return root
