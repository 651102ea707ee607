"""data -> tokenizer -> shards on real Spark, read back with MosaicML Streaming."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from lathe.core.errors import InputError
from lathe.core.stage import MANIFEST, StageContext, read_manifest
from lathe.data.stage import DATA
from lathe.pipelines.config import load_config
from lathe.pipelines.runner import run_pipeline
from lathe.tokenizer.shards import VAL_SALT
from lathe.tokenizer.special import EOS, FIM_PREFIX, PAD
from lathe.tokenizer.splits import stable_fraction
from lathe.tokenizer.stage import SHARDS, TOKENIZER, run_shards
from lathe.tokenizer.streams import HELD_OUT
from lathe.tokenizer.vocab import load_tokenizer
from tests.conftest import only_stream

STAGES = {s.name: s for s in (DATA, TOKENIZER)}

pytestmark = pytest.mark.spark
QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def pipeline(shards_pipeline):
    return shards_pipeline


def sample_hashes(split_dir: Path) -> list[str]:
    from streaming import StreamingDataset

    ds = StreamingDataset(local=str(split_dir), shuffle=False, batch_size=1)
    return [hashlib.sha1(ds[i]["tokens"].tobytes()).hexdigest() for i in range(len(ds))]


def test_tokenizer_report_and_files(pipeline) -> None:
    out, cfg, outcomes = pipeline
    assert [o.name for o in outcomes] == ["data", "tokenizer", "shards"]
    report = json.loads((out / "tokenizer" / "report.json").read_text())
    assert report["main"]["round_trip_rate"] == 1.0 and report["main"]["vocab_size"] == 512
    assert [r["vocab_size"] for r in sorted(report["ablation"], key=lambda r: r["vocab_size"])] == [320, 384, 512]
    # more vocabulary compresses better on the same held-out files
    bpt = [r["bytes_per_token"] for r in sorted(report["ablation"], key=lambda r: r["vocab_size"])]
    assert bpt == sorted(bpt) and report["main"]["languages"]["python"]["bytes_per_token"] > 1.5
    assert (out / "tokenizer" / "tokenizer_config.json").is_file() and (out / "tokenizer" / "vocab_ablation.png").is_file()


def test_shards_read_back_with_every_token(pipeline) -> None:
    from streaming import StreamingDataset

    out, cfg, _ = pipeline
    manifest = json.loads((out / "shards" / MANIFEST).read_text())
    counts = manifest["counts"]
    tok = load_tokenizer(out / "tokenizer")
    eos, pad, fim = tok.token_to_id(EOS), tok.token_to_id(PAD), tok.token_to_id(FIM_PREFIX)
    for split in ("train", "val"):
        ds = StreamingDataset(local=str(only_stream(out) / split), shuffle=False, batch_size=1)
        arrays = [ds[i]["tokens"] for i in range(len(ds))]
        assert len(arrays) == counts[f"{split}.samples"]
        flat = np.concatenate(arrays)
        assert all(a.shape == (128,) for a in arrays) and flat.max() < 512
        assert int((flat != pad).sum()) == counts[f"{split}.tokens"]
        # one end-of-text per plain document and per FIM example; a long FIM document is several examples
        plain, examples = counts[f"{split}.docs"] - counts[f"{split}.fim_docs"], int((flat == fim).sum())
        assert int((flat == eos).sum()) == plain + examples and examples >= counts[f"{split}.fim_docs"]
    assert 0.3 < counts["train.fim_docs"] / counts["train.docs"] < 0.7


# Pinned once (SHA-256 of "shards-val:<id>", first 32 bits / 2^32): a change of the hash, its salt or the
# split's rule moves documents between train and val, and these literals catch it.
PINNED_FRACTIONS = {
    "doc-1": 0.655952590983361,
    "doc-3": 0.1348561905324459,
    "doc-7": 0.9329667766578496,
    "doc-9": 0.07291242969222367,
    "doc-11": 0.06614941218867898,
    "doc-14": 0.04287441563792527,
}
PINNED_VAL = {"doc-9", "doc-11", "doc-14"}  # at shards.val_fraction = 0.1


def test_split_is_a_stable_hash_of_the_id(pipeline, spark) -> None:
    from lathe.tokenizer.splits import stable_fraction_col

    out, cfg, _ = pipeline
    assert cfg.shards.val_fraction == 0.1 and VAL_SALT == "shards-val"
    assert {i: stable_fraction(i, VAL_SALT) for i in PINNED_FRACTIONS} == pytest.approx(PINNED_FRACTIONS, abs=1e-12)
    ids = spark.createDataFrame([(i,) for i in PINNED_FRACTIONS], "id string")
    on_spark = {r["id"]: r["f"] for r in ids.select("id", stable_fraction_col(ids["id"], VAL_SALT).alias("f")).collect()}
    assert on_spark == pytest.approx(PINNED_FRACTIONS, abs=1e-12)  # the column the shards stage splits by
    assert {i for i, f in on_spark.items() if f < cfg.shards.val_fraction} == PINNED_VAL
    # the stage split the session's documents by that same rule
    kept = pd.read_parquet(out / "data" / "kept")
    in_val = sum(stable_fraction(i, VAL_SALT) < cfg.shards.val_fraction for i in kept["id"])
    counts = json.loads((out / "shards" / MANIFEST).read_text())["counts"]
    assert counts["val.docs"] == in_val and counts["train.docs"] == len(kept) - in_val
    # the validation documents are kept beside the shards as written, with their language, for the evaluations
    held = pd.read_parquet(only_stream(out) / HELD_OUT)
    val = kept[[stable_fraction(i, VAL_SALT) < cfg.shards.val_fraction for i in kept["id"]]]
    assert sorted(held["id"]) == sorted(val["id"]) and len(held) == in_val
    by_id = val.set_index("id")
    assert all(r.content == by_id.loc[r.id, "content"] and r.lang == by_id.loc[r.id, "lang"] for r in held.itertuples())


def test_same_inputs_give_the_same_samples_in_the_same_order(pipeline) -> None:
    out, cfg, _ = pipeline
    before = sample_hashes(only_stream(out) / "train")
    assert [o.status for o in run_pipeline(cfg, ["shards"], force=True, console=QUIET)] == ["skipped", "skipped", "ran"]
    assert sample_hashes(only_stream(out) / "train") == before


def test_reading_a_split_back_leaves_no_lock_files_behind(pipeline, tmp_path: Path, private_tempdir: Path) -> None:
    from lathe.tokenizer.shards import read_back

    out, _, _ = pipeline
    samples, _, _ = read_back(str(only_stream(out) / "val"), tmp_path)
    assert samples > 0 and list(private_tempdir.glob("*_filelock")) == []  # Streaming made two there; both are gone


def test_dataloader_resumes_exactly_from_its_state_dict(pipeline) -> None:
    from streaming import StreamingDataLoader, StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    out, _, _ = pipeline
    local = str(only_stream(out) / "train")

    def loader() -> StreamingDataLoader:
        ds = StreamingDataset(local=local, shuffle=True, shuffle_seed=7, batch_size=4)
        return StreamingDataLoader(ds, batch_size=4, num_workers=0)

    first = loader()
    it = iter(first)
    opening = next(it)["tokens"].clone()
    for _ in range(2):
        next(it)
    state = first.state_dict()
    expected = [next(it)["tokens"].clone() for _ in range(2)]
    del it, first
    clean_stale_shared_memory()
    resumed = loader()
    resumed.load_state_dict(state)
    got = [b["tokens"] for _, b in zip(range(2), resumed)]
    assert len(got) == 2 and all((a == b).all() for a, b in zip(expected, got))
    assert not (got[0] == opening).all()  # it resumed mid-epoch, not from the start


def _ctx(pipeline, sets: list[str], inputs: dict[str, Path] | None = None, out_dir: Path | None = None) -> StageContext:
    out, cfg, _ = pipeline
    bad = load_config(None, [f"run.runs_dir={out.parent}", "profile=small", "tokenizer.vocab_size=512", *sets])
    dest = out_dir or out.parent / "scratch"
    dest.mkdir(parents=True, exist_ok=True)
    dirs = inputs or {"data": out / "data", "tokenizer": out / "tokenizer"}
    upstream = {name: STAGES[name].upstream(d, read_manifest(d) or {}) for name, d in dirs.items()}
    return StageContext(bad, dest, upstream, QUIET, outputs=SHARDS.default_outputs(dest))


def test_bad_input_is_one_clear_error_before_work(pipeline, spark, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="has 512 tokens but tokenizer.vocab_size is 1024"):
        run_shards(_ctx(pipeline, ["tokenizer.vocab_size=1024"]))
    with pytest.raises(InputError, match=r"shards output /proc/lathe-shards is not writable"):
        run_shards(_ctx(pipeline, ["shards.output=/proc/lathe-shards"]))
    empty = tmp_path / "data"
    spark.createDataFrame([], "id string, content string").write.parquet(str(empty / "kept"))
    out, *_ = pipeline
    ctx = _ctx(pipeline, [], {"data": empty, "tokenizer": out / "tokenizer"}, tmp_path / "shards")
    with pytest.raises(InputError, match=r"clean data .*kept is empty"):
        run_shards(ctx)
    assert not (tmp_path / "shards" / MANIFEST).exists()


def test_every_part_is_its_own_spark_task(pipeline) -> None:
    out, cfg, _ = pipeline
    parts = json.loads((out / "shards" / MANIFEST).read_text())["details"]["parts"]
    written = {(p["split"], p["part"]) for p in parts}
    assert written == {(s, p) for s in ("train", "val") for p in range(cfg.shards.partitions)}
    assert len({p["task"] for p in parts}) == len(parts)  # hash routing put no two parts in one task
    assert all(p["seconds"] > 0 for p in parts)
