"""The training mixture's arithmetic and which earlier streams a retrain may build on (no Spark)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lathe.core.errors import InputError
from lathe.core.stage import Upstream
from lathe.tokenizer.streams import StreamInfo, previous_streams
from lathe.training.mixture import plan_mixture, run_samples, validation_roles


def stream(name: str, train: int, val: int = 2, density: int = 100) -> StreamInfo:
    return StreamInfo(
        name=name,
        uri=f"/s/{name}",
        snapshot=name,
        docs=train,
        train_samples=train,
        train_tokens=train * density,
        val_samples=val,
        val_tokens=val * density,
    )


def test_the_new_stream_is_seen_once_and_earlier_ones_share_the_replay_part_by_size() -> None:
    streams = [stream("a", 300), stream("b", 100), stream("c", 80)]
    draws = plan_mixture(streams, "c", replay=0.25, run_samples_of=1070)
    by = {d.name: d for d in draws}
    assert [d.name for d in draws] == ["c", "a", "b"] and by["c"].role == "new" and by["a"].role == "replay"
    assert by["c"].choose == 80  # once per epoch
    # 80 * 0.25 / 0.75 = 26.67 -> 27 replayed, 20.25 : 6.75 by size; the spare one to the larger remainder
    assert (by["a"].choose, by["b"].choose) == (20, 7)
    # tokens over a 1,070-sample run (10 epochs of 107), 100 real tokens per sample
    assert [by[n].tokens for n in "cab"] == [80_000, 20_000, 7_000]


def test_a_replay_larger_than_the_earlier_data_repeats_it() -> None:
    draws = plan_mixture([stream("old", 10), stream("new", 100)], "new", replay=0.5)
    assert {d.name: d.choose for d in draws} == {"new": 100, "old": 100}  # old repeated 10 times


def test_without_new_documents_every_earlier_stream_is_drawn_once() -> None:
    draws = plan_mixture([stream("a", 30), stream("b", 20)], None, replay=0.25)
    assert {d.name: (d.role, d.choose) for d in draws} == {"a": ("replay", 30), "b": ("replay", 20)}
    assert validation_roles(draws) == {"val": ["/s/a", "/s/b"]}


def test_the_first_run_trains_on_its_one_stream() -> None:
    draws = plan_mixture([stream("a", 40)], "a", replay=0.25)
    assert [(d.role, d.choose) for d in draws] == [("new", 40)]
    assert validation_roles(draws) == {"val": ["/s/a"]}


def test_validation_splits_new_data_and_earlier_data_apart() -> None:
    draws = plan_mixture([stream("a", 30), stream("b", 20, val=0), stream("c", 10)], "c", replay=0.25)
    assert validation_roles(draws) == {"val": ["/s/c"], "replay_val": ["/s/a"]}  # b has no val samples
    # a new stream without validation documents: validate on the earlier ones, no separate replay figure
    draws = plan_mixture([stream("a", 30), stream("c", 10, val=0)], "c", replay=0.25)
    assert validation_roles(draws) == {"val": ["/s/a"]}


def test_run_length_in_samples() -> None:
    assert run_samples("60ba", 8, 512, 1000) == 480
    assert run_samples("1000tok", 8, 512, 1000) == 2
    assert run_samples("2ep", 8, 512, 1000) == 2000
    with pytest.raises(InputError, match=r"train.max_duration='1h' is not <int>ba"):
        run_samples("1h", 8, 512, 1000)


def test_no_training_samples_is_one_clear_error() -> None:
    with pytest.raises(InputError, match="the shards hold no training samples"):
        plan_mixture([stream("a", 0)], "a", replay=0.25)


def previous(tmp_path: Path, version: str = "2", vocabulary: str = "v1", **config: object) -> Upstream:
    cfg = {"seq_len": 128, "fim_rate": 0.5, "fim_spm_rate": 0.5, "seed": 0, "output": None, **config}
    manifest = {
        "version": version,
        "config": cfg,
        "details": {"vocabulary": vocabulary, "streams": [stream("0000-abc", 5).model_dump()]},
    }
    return Upstream("shards", tmp_path / "shards.previous", {}, manifest)


def test_earlier_streams_are_kept_only_while_their_samples_mean_the_same(tmp_path: Path) -> None:
    now = {"seq_len": 128, "fim_rate": 0.5, "fim_spm_rate": 0.5, "seed": 0, "output": None}
    kept, why = previous_streams(previous(tmp_path), "v1", now, "2")
    assert why == "" and [s.uri for s in kept] == [str(tmp_path / "shards.previous" / "mds" / "0000-abc")]
    assert previous_streams(None, "v1", now, "2") == ([], "no earlier shards")
    assert previous_streams(previous(tmp_path, vocabulary="v0"), "v1", now, "2") == ([], "a new vocabulary")
    assert previous_streams(previous(tmp_path, seq_len=64), "v1", now, "2") == ([], "shards.seq_len changed")
    assert previous_streams(previous(tmp_path, version="1"), "v1", now, "2") == ([], "the shards stage changed")
    moved = previous(tmp_path, output="s3://bucket/old")
    assert previous_streams(moved, "v1", now, "2") == ([], "shards.output moved off an object store")
