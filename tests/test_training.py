"""Training: real Composer runs of a micro Llama on the session's MDS shards (CPU)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from rich.console import Console

from lathe.core.errors import InputError
from lathe.core.stage import MANIFEST, read_manifest
from lathe.pipelines.config import load_config
from lathe.pipelines.runner import run_pipeline
from lathe.tokenizer.streams import StreamInfo
from lathe.training.callbacks import SpikeDetector
from lathe.training.config import LossSpikeConfig
from lathe.training.data import collate
from lathe.training.job import TrainJob
from lathe.training.mixture import plan_mixture
from lathe.training.optim import DecoupledLionW
from lathe.training.trainer import preflight
from tests.conftest import SMALL_PIPELINE, only_stream

QUIET = Console(quiet=True)
MICRO = [
    "train.model={d_model: 64, n_layers: 2, n_heads: 2, max_seq_len: 128}",
    "train.optimizer.lr=0.01",
    "train.warmup=2ba",
    "train.max_duration=16ba",
    "train.global_train_batch_size=4",
    "train.device_train_microbatch_size=4",
    "train.eval_interval=8ba",
    "train.eval_subset_num_batches=4",
    "train.save_interval=4ba",
    "train.save_num_checkpoints_to_keep=-1",
]


# --- pure parts ---------------------------------------------------------------------------
def test_spike_detector_flags_jumps_not_noise() -> None:
    det = SpikeDetector(LossSpikeConfig(window=5, sigmas=4.0, min_ratio=1.2))
    normal = [3.0, 3.1, 2.9, 3.05, 2.95, 3.02, 2.98]
    assert not any(det.update(x).spike for x in normal)
    verdict = det.update(9.0)
    assert verdict.spike and 2.9 < verdict.mean < 3.1
    assert not det.update(3.0).spike  # the spike did not pollute the window
    assert det.update(float("nan")).spike


def test_a_time_budget_ends_training_and_its_cosine_schedule_on_time() -> None:
    """A real Composer run whose batches take at least 20 ms, a 1 s budget and a ceiling of 1,000 batches (20 s):
    it stops far below the ceiling, and its learning rate has decayed to the schedule's floor at the end. (No
    bound on the wall time: a busy machine makes the batches slower and the fitted run shorter.)"""
    from composer import Trainer
    from composer.callbacks import LRMonitor
    from composer.core import Callback
    from composer.models import ComposerClassifier
    from composer.optim import CosineAnnealingWithWarmupScheduler
    from torch.utils.data import DataLoader, TensorDataset

    from lathe.training.callbacks import TimeBudget
    from lathe.training.config import TrainConfig

    with pytest.raises(ValueError, match=r"time_budget_s needs train.max_duration in batches .* write it as <n>ba"):
        TrainConfig(time_budget_s=10, max_duration="1000tok")

    class Slow(Callback):
        def batch_end(self, state, logger) -> None:  # type: ignore[no-untyped-def]
            time.sleep(0.02)

    lrs: list[float] = []

    class LastLr(Callback):
        def batch_end(self, state, logger) -> None:  # type: ignore[no-untyped-def]
            lrs.append(state.schedulers[0].get_last_lr()[0])

    data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    model = ComposerClassifier(torch.nn.Linear(4, 2), num_classes=2)
    trainer = Trainer(
        model=model,
        train_dataloader=DataLoader(data, batch_size=4),
        max_duration="1000ba",
        optimizers=torch.optim.SGD(model.parameters(), lr=1.0),
        schedulers=CosineAnnealingWithWarmupScheduler(t_warmup="2ba", alpha_f=0.1),
        callbacks=[Slow(), LastLr(), LRMonitor(), TimeBudget(1.0, probe=10, skip=2)],
        device="cpu",
        progress_bar=False,
    )
    trainer.fit()
    batches = int(trainer.state.timestamp.batch)
    assert batches <= 50 and len(lrs) == batches  # 1 s holds at most 50 batches of 20 ms
    assert lrs[-1] == pytest.approx(0.1, abs=0.02) and max(lrs) == pytest.approx(1.0, abs=0.05)


def test_lion_follows_its_update_rule_and_minimises_a_quadratic() -> None:
    w = torch.nn.Parameter(torch.tensor([5.0, -3.0]))
    opt = DecoupledLionW([w], lr=0.1, betas=(0.9, 0.99), weight_decay=0.0)
    (w**2).sum().backward()
    opt.step()  # first step: m = 0, so the update is sign(g) * lr
    assert torch.allclose(w, torch.tensor([4.9, -2.9]))
    assert torch.allclose(opt.state[w]["exp_avg"], 0.01 * torch.tensor([10.0, -6.0]))
    for _ in range(100):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert float((w.detach() ** 2).sum()) < 0.05 * 34  # sign updates oscillate near 0, but the loss falls 50x
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.zeros(3)
    DecoupledLionW([p], lr=0.1, weight_decay=0.5).step()
    assert torch.allclose(p, torch.full((3,), 0.5))  # decay 0.5 * lr/initial_lr, sign(0) = 0


def test_collate_masks_padding_in_labels() -> None:
    import numpy as np

    batch = collate(pad_id=1)([{"tokens": np.array([5, 6, 1, 1], dtype=np.uint16), "sample_idx": 3}])
    assert batch["input_ids"].dtype == torch.int64 and batch["labels"].tolist() == [[5, 6, -100, -100]]
    assert batch["sample_idx"].tolist() == [3]


# --- real runs ------------------------------------------------------------------------------
def job_for(pipeline, out: Path, extra: list[str], run_name: str = "micro") -> TrainJob:
    profile_dir, _, _ = pipeline
    cfg = load_config(None, [f"run.runs_dir={profile_dir.parent}", *SMALL_PIPELINE, *MICRO, *extra])
    (stream,) = [StreamInfo.model_validate(s) for s in read_manifest(profile_dir / "shards")["details"]["streams"]]
    out.mkdir(parents=True, exist_ok=True)
    return TrainJob(
        train=cfg.train,
        seq_len=cfg.shards.seq_len,
        streams=plan_mixture([stream], stream.name, cfg.train.mixture.replay),
        validation={"val": [stream.uri]},
        tokenizer=str(profile_dir / "tokenizer"),
        out_dir=str(out),
        run_name=run_name,
        mlflow_uri=f"sqlite:///{out / 'mlflow.db'}",
    )


def worker(job: TrainJob, out: Path) -> subprocess.Popen:
    (out / "job.json").write_text(job.model_dump_json())
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lathe.training.worker", str(out / "job.json")],
        stdout=open(out / "stdout.txt", "w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def train_losses(out: Path) -> dict[int, float]:
    losses = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss/train/total" in row:
            losses[row["step"]] = row["loss/train/total"]  # a resumed run logs later steps again: last wins
    return losses


@pytest.fixture(scope="module")
def trained(shards_pipeline):
    """The train stage through the runner (in process): MLflow, W&B offline, export, registry."""
    profile_dir, _, _ = shards_pipeline
    cfg = load_config(None, [f"run.runs_dir={profile_dir.parent}", *SMALL_PIPELINE, *MICRO])
    with pytest.MonkeyPatch.context() as env:  # the module's tests run with it; restored after them
        env.setenv("WANDB_MODE", "offline")
        outcomes = run_pipeline(cfg, ["train"], console=QUIET)
        yield profile_dir / "train", outcomes


def test_training_lowers_validation_loss_and_tracks_everything(trained) -> None:
    out, outcomes = trained
    assert [o.status for o in outcomes][-1] == "ran"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["batches"] == 16 and summary["final_val_loss"] < summary["initial_val_loss"] - 0.5
    assert summary["initial_val_loss"] == pytest.approx(math.log(512), abs=0.5)  # untrained ~ uniform
    manifest = json.loads((out / MANIFEST).read_text())
    client = mlflow.MlflowClient(f"sqlite:///{out.parent.parent / 'mlflow.db'}")
    run = client.get_run(manifest["mlflow"]["run_id"])
    assert {
        "loss.train.total",
        "metrics.val.LanguageCrossEntropy",
        "throughput.tokens_per_sec",
        "lr-DecoupledAdamW.group0",
    } <= set(run.data.metrics)
    version = client.get_model_version("lathe-code", summary["model_version"])
    assert version.run_id == run.info.run_id
    offline = list((out / "wandb").glob("offline-run-*/*.wandb"))
    assert offline and offline[0].stat().st_size > 0


def test_training_metrics_are_computed_on_log_batches_only(trained) -> None:
    out, _ = trained
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    with_metrics = {r["step"] for r in rows if "metrics/train/LanguageCrossEntropy" in r}
    assert with_metrics == {0, 10}  # train.train_metrics_every=10 over 16 batches
    assert {r["step"] for r in rows if "loss/train/total" in r} == set(range(16))  # the loss is every batch


def test_exported_model_loads_and_generates(trained) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = trained
    model = AutoModelForCausalLM.from_pretrained(str(out / "hf_model"))
    tok = AutoTokenizer.from_pretrained(str(out / "hf_model"))
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok) == 512
    ids = tok("def main(", return_tensors="pt").input_ids
    # EOS may not end it early (min_new_tokens): exactly 8 new tokens, after the prompt as it was
    gen = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape == (1, ids.shape[1] + 8) and torch.equal(gen[:, : ids.shape[1]], ids)
    # greedy decoding with the KV cache is the argmax of full forward passes over the growing sequence (EOS
    # suppressed as min_new_tokens suppresses it): the exported config and weights describe one model
    eos = model.generation_config.eos_token_id
    by_hand = ids
    with torch.no_grad():
        for _ in range(8):
            logits = model(by_hand).logits[0, -1]
            logits[[eos] if isinstance(eos, int) else list(eos)] = float("-inf")
            by_hand = torch.cat([by_hand, logits.argmax().view(1, 1)], dim=1)
    assert torch.equal(gen, by_hand), (gen, by_hand)
    assert isinstance(tok.decode(gen[0]), str)


def test_second_run_skips_training(trained, shards_pipeline) -> None:
    out, _ = trained
    profile_dir, _, _ = shards_pipeline
    cfg = load_config(None, [f"run.runs_dir={profile_dir.parent}", *SMALL_PIPELINE, *MICRO])
    assert [o.status for o in run_pipeline(cfg, ["train"], console=QUIET)][-1] == "skipped"


def lathe_train(runs: Path, extra: list[str], env: dict[str, str], own_machine: bool = False) -> subprocess.Popen:
    """`lathe train` as an operator (or a Kubernetes pod) runs it, on a copy of the session's upstream stages.

    ``own_machine``: what a second node has to itself that processes of one host share, made private
    through bubblewrap: Streaming's shared memory (/dev/shm) and lock files (TMPDIR), and the local
    disk under train.save_folder, through which Composer stages a bucket's checkpoints (its per-node
    signal files there would clash in one folder).
    """
    node = env.get("NODE_RANK", "single")
    (runs / "empty.yaml").write_text("{}\n")  # the same config as load_config(None, ...): fingerprints match the copy
    sets = [
        f"run.runs_dir={runs}",
        *SMALL_PIPELINE,
        *MICRO,
        "train.max_duration=6ba",
        "train.wandb.enabled=false",
        f"train.save_folder={runs / 'checkpoints'}",
        *extra,
    ]
    cmd = [str(Path(sys.executable).with_name("lathe")), "train", "--config", str(runs / "empty.yaml")]
    if own_machine:
        (runs / f"tmp-{node}").mkdir()
        (runs / "checkpoints").mkdir(exist_ok=True)
        (runs / f"disk-{node}").mkdir()
        env = {**env, "TMPDIR": str(runs / f"tmp-{node}")}
        cmd = [
            "bwrap",
            "--dev-bind",
            "/",
            "/",
            "--tmpfs",
            "/dev/shm",
            "--bind",
            str(runs / f"disk-{node}"),
            str(runs / "checkpoints"),
            "--die-with-parent",
            "--",
            *cmd,
        ]
    return subprocess.Popen(
        [*cmd, *(a for s in sets for a in ("--set", s))],
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        stdout=open(runs / f"node-{node}.txt", "w"),
        stderr=subprocess.STDOUT,
    )


@pytest.fixture(scope="module")
def two_rank_runs(shards_pipeline, tmp_path_factory) -> dict[str, Path]:
    """The same 6-batch job on two ranks twice: one node of two processes, and two nodes of one process
    each on loopback (NODE_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT as the Kubernetes Indexed Job sets
    them). Returns each run's train stage folder."""
    import shutil
    import socket

    profile_dir, _, _ = shards_pipeline
    out = {}
    for name in ("one_node", "two_nodes"):
        runs = tmp_path_factory.mktemp(name)
        for stage in ("data", "tokenizer", "shards"):
            shutil.copytree(profile_dir / stage, runs / "small" / stage, symlinks=True)
        out[name] = runs
    # Both jobs at once: most of each is interpreters importing Composer and single-threaded stage work,
    # which the other job's processes overlap on the 2 cores (each run has its own copy of the shards,
    # so their Streaming shared memory and ports are apart).
    single = lathe_train(out["one_node"], ["train.nproc=2"], {})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = [
        lathe_train(
            out["two_nodes"],
            ["train.nproc=1"],
            {"NODE_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
            own_machine=rank == 1,
        )
        for rank in (0, 1)
    ]
    assert single.wait(timeout=400) == 0, (out["one_node"] / "node-single.txt").read_text()[-3000:]
    for rank, node in enumerate(nodes):
        assert node.wait(timeout=400) == 0, (out["two_nodes"] / f"node-{rank}.txt").read_text()[-3000:]
    return {name: runs / "small" for name, runs in out.items()}


def test_two_processes_keep_the_global_batch(two_rank_runs) -> None:
    train = two_rank_runs["one_node"] / "train"
    summary = json.loads((train / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["batches"] == 6
    assert summary["tokens"] > 0 and summary["final_val_loss"] < summary["initial_val_loss"]
    assert (train / "logs" / "rank1.stdout.txt").exists()


def test_two_nodes_train_exactly_as_two_processes_on_one(two_rank_runs) -> None:
    one, two = two_rank_runs["one_node"], two_rank_runs["two_nodes"]
    summary = json.loads((two / "train" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["batches"] == 6 and summary["model_version"]  # node 0 registered it
    assert (two / "train-node1" / "job.json").exists() and not (two / "train-node1" / "hf_model").exists()
    a, b = train_losses(one / "train"), train_losses(two / "train")
    assert sorted(a) == sorted(b) == list(range(6))
    assert all(b[s] == pytest.approx(a[s], abs=1e-5) for s in a), [(s, a[s], b[s]) for s in a]


def test_a_joining_node_needs_shared_checkpoints_and_finished_inputs(shards_pipeline, tmp_path: Path, monkeypatch) -> None:
    from lathe.pipelines.runner import planned
    from lathe.training.pretrain import join_training

    profile_dir, _, _ = shards_pipeline
    monkeypatch.setenv("NODE_RANK", "1")
    cfg = load_config(None, [f"run.runs_dir={profile_dir.parent}", *SMALL_PIPELINE, *MICRO])
    inputs, _ = planned(cfg, "train")
    with pytest.raises(
        InputError, match="node 1 of a multi-node job: train.save_folder must be an object-store URI every node reads"
    ):
        join_training(cfg, inputs, "fp", QUIET)
    other = load_config(None, [f"run.runs_dir={profile_dir.parent}", *SMALL_PIPELINE, *MICRO, "shards.seq_len=64"])
    with pytest.raises(InputError, match=r"stage shards is not finished under this config in .*; node 0 runs it first"):
        planned(other, "train")


def test_sigkill_then_resume_matches_an_uninterrupted_run(shards_pipeline, tmp_path: Path) -> None:
    import shutil

    extra = ["train.max_duration=60ba", "train.wandb.enabled=false"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    # The uninterrupted run beside the broken one, on its own copy of the shards: Streaming keys its
    # shared memory by the local shard folder.
    copy = tmp_path / "mds"
    shutil.copytree(only_stream(shards_pipeline[0]), copy)
    ref = job_for(shards_pipeline, whole, extra, "ref")
    ref = ref.model_copy(
        update={"streams": [ref.streams[0].model_copy(update={"uri": str(copy)})], "validation": {"val": [str(copy)]}}
    )
    reference = worker(ref, whole)
    job = job_for(shards_pipeline, broken, extra, "broken")
    proc = worker(job, broken)
    deadline = time.time() + 240
    latest = broken / "checkpoints" / "latest-rank0.pt"
    # Kill once `latest` points past batch 4: Composer writes the file, then moves the link.
    while not (latest.is_symlink() and os.readlink(latest) != "ep0-ba4-rank0.pt") and time.time() < deadline:
        assert proc.poll() is None, (broken / "stdout.txt").read_text()[-2000:]
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (broken / "train_summary.json").exists()
    assert worker(job, broken).wait(timeout=300) == 0, (broken / "stdout.txt").read_text()[-2000:]
    assert reference.wait(timeout=300) == 0, (whole / "stdout.txt").read_text()[-2000:]
    summary = json.loads((broken / "train_summary.json").read_text())
    assert 8 <= summary["resumed_at_batch"] < 60 and summary["batches"] == 60
    a, b = train_losses(whole), train_losses(broken)
    after = list(range(summary["resumed_at_batch"], 60))  # steps are 0-based batch indices
    assert after and all(b[s] == pytest.approx(a[s], abs=1e-5) for s in after), [(s, a[s], b[s]) for s in after]


def test_spike_is_logged_with_samples_that_replay_exactly(shards_pipeline, tmp_path: Path, private_tempdir: Path) -> None:
    from lathe.tokenizer.special import PAD
    from lathe.tokenizer.vocab import load_tokenizer
    from lathe.training.replay import load_batch, read_spike, replay_loss
    from lathe.training.trainer import run_training

    profile_dir, _, _ = shards_pipeline
    sensitive = [
        "train.loss_spike={window: 2, sigmas: 0.0, min_ratio: 1.0, action: skip}",
        "train.max_duration=12ba",
        "train.wandb.enabled=false",
    ]
    run_training(job_for(shards_pipeline, tmp_path, sensitive, "spiky"))
    assert list(private_tempdir.glob("*_filelock")) == []  # the train and val datasets' Streaming lock files are removed
    record = read_spike(tmp_path / "loss_spikes.jsonl")
    assert record["action"] == "skip" and len(record["samples"]) == 4
    assert all(
        s["stream"] == 0 and s["shard"].startswith("part-") and ".mds" in s["shard"] and s["position"] >= 0
        for s in record["samples"]
    )
    pad = load_tokenizer(profile_dir / "tokenizer").token_to_id(PAD)
    batch = load_batch([str(only_stream(profile_dir) / "train")], record, pad, tmp_path / "cache")  # digests checked inside
    assert batch["input_ids"].shape == (4, 128)
    assert math.isfinite(replay_loss(tmp_path / "hf_model", batch))


def test_bad_input_fails_before_compute(shards_pipeline, tmp_path: Path) -> None:
    import shutil

    profile_dir, _, _ = shards_pipeline
    with pytest.raises(InputError, match=r"train.model.vocab_size=999 but the tokenizer has 512"):
        preflight(job_for(shards_pipeline, tmp_path / "a", ["train.model.vocab_size=999"]))
    with pytest.raises(InputError, match=r"checkpoint folder /proc/lathe-ckpt is not writable"):
        preflight(job_for(shards_pipeline, tmp_path / "b", ["train.save_folder=/proc/lathe-ckpt"]))
    copy = tmp_path / "mds"
    shutil.copytree(only_stream(profile_dir), copy)
    job = job_for(shards_pipeline, tmp_path / "c", [])
    job = job.model_copy(
        update={"streams": [job.streams[0].model_copy(update={"uri": str(copy)})], "validation": {"val": [str(copy)]}}
    )
    (copy / "val" / "index.json").write_text("{not json")
    with pytest.raises(InputError, match=r"MDS index .*val/index.json is corrupt"):
        preflight(job)
    shutil.rmtree(copy / "val")
    with pytest.raises(InputError, match=r"MDS index .*val/index.json not found"):
        preflight(job)
    shard = next((copy / "train").glob("part-*/shard.*.mds.zstd"))
    shard.write_bytes(shard.read_bytes()[:10])
    shutil.copytree(only_stream(profile_dir) / "val", copy / "val")
    with pytest.raises(InputError, match=r"MDS shard .* is missing or truncated"):
        preflight(job)


def test_fsdp_full_shard_on_two_processes_exports_full_weights(shards_pipeline, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from lathe.training.launcher import launch

    extra = ["train.max_duration=4ba", "train.wandb.enabled=false", "train.fsdp=FULL_SHARD", "train.save_interval=2ba"]
    launch(job_for(shards_pipeline, tmp_path, extra, "fsdp"), 2, tmp_path)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf_model"))
    assert summary["world_size"] == 2 and sum(p.numel() for p in model.parameters()) == summary["parameters"]
    assert list((tmp_path / "checkpoints").glob("ep0-ba4*"))  # sharded checkpoints for autoresume


def test_eval_stage_generates_scores_and_gates(trained, shards_pipeline) -> None:
    from mlflow.tracking import MlflowClient

    out, _ = trained
    profile_dir, _, _ = shards_pipeline
    cfg = load_config(
        None,
        [
            f"run.runs_dir={profile_dir.parent}",
            *SMALL_PIPELINE,
            *MICRO,
            "eval.ks=[1, 2]",
            "eval.generation={limit: 4, n: 2, max_new_tokens: 16, temperature: 0.8}",
        ],
    )
    assert [o.status for o in run_pipeline(cfg, ["eval"], console=QUIET)][-1] == "ran"
    report = json.loads((profile_dir / "eval" / "results.json").read_text())
    assert set(report) >= {"pass@1", "pass@2", "results", "gate"} and len(report["results"]) == 8
    samples = [json.loads(line) for line in (profile_dir / "eval" / "samples.jsonl").read_text().splitlines()]
    assert [s["task_id"] for s in samples] == [r["task_id"] for r in report["results"]]
    assert report["gate"]["passed"] and (profile_dir / "eval" / "report.md").read_text().startswith("# HumanEval report")
    # The product's task: infilling per FIM mode beside the floors (same tasks, same scoring), and bits per byte
    # on the held-out documents beside the compressors; all in the stage's MLflow metrics.
    infilling = report["infilling"]
    assert infilling["tasks"] == 48 and set(infilling["modes"]) == {"psm", "spm"}
    assert set(infilling["floors"]) == {"empty", "previous-line"} and infilling["floors"]["empty"]["edit_similarity"] == 0.0
    for part in (*infilling["modes"].values(), *infilling["floors"].values()):
        assert set(part) >= {"pass@1", "exact_match", "edit_similarity", "ended"} and len(part["results"]) == 48
    bpb = report["bits_per_byte"]
    assert bpb["documents"] > 0 and 0 < bpb["xz-9e"] < bpb["gzip-9"] < 8 and 0 < bpb["model"]
    print(
        "infilling",
        {
            m: {k: f[k] for k in ("pass@1", "exact_match", "edit_similarity", "ended")}
            for m, f in [*infilling["modes"].items(), *infilling["floors"].items()]
        },
    )
    print("bits per byte", {k: bpb[k] for k in ("model", "gzip-9", "xz-9e", "documents", "bytes")})
    metrics = json.loads((profile_dir / "eval" / "manifest.json").read_text())["metrics"]
    assert {"infill/psm/pass_at_1", "infill/spm/edit_similarity", "infill/floor/previous-line/edit_similarity"} <= set(metrics)
    assert metrics["bits_per_byte"] == pytest.approx(bpb["model"]) and "xz_bits_per_byte" in metrics
    # per language (the shards stage kept the held-out documents with their language), and line completion on them
    assert set(bpb["languages"]) and sum(f["bytes"] for f in bpb["languages"].values()) == bpb["bytes"]
    lines = report["line_completion"]
    assert lines["tasks"] == 32 and lines["floor"]["tasks"] == 32  # spread over the documents: several cuts each
    assert set(lines["languages"]) <= set(bpb["languages"]) and 0 <= lines["edit_similarity"] <= 100
    assert {"line/edit_similarity", "line/exact_match", *(f"bits_per_byte/{lang}" for lang in bpb["languages"])} <= set(metrics)
    assert report["gate"]["paired"] == {}  # no production version: nothing to pair with
    page = (profile_dir / "eval" / "report.md").read_text()
    assert "## Infilling" in page and "| floor: previous-line |" in page and "## Bits per byte on held-out documents" in page
    assert "## Line completion on held-out documents (seed 0)" in page
    client = MlflowClient(f"sqlite:///{profile_dir.parent / 'mlflow.db'}")
    version = client.get_model_version_by_alias("lathe-code", "staff")
    assert version.tags["gate"] == "passed" and float(version.tags["eval.val_loss"]) == pytest.approx(
        report["gate"]["candidate"]["val_loss"]
    )


def test_evaluate_a_registered_version_by_alias(trained, shards_pipeline, tmp_path: Path, monkeypatch) -> None:
    from lathe.eval.config import EvalConfig
    from lathe.eval.evaluate import evaluate_model
    from lathe.eval.languages import LANGUAGES

    profile_dir, _, _ = shards_pipeline
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{profile_dir.parent / 'mlflow.db'}")
    cfg = EvalConfig(ks=[1], generation={"limit": 2, "n": 1, "max_new_tokens": 8, "temperature": 0.0})
    # a language whose toolchain is missing is skipped with the reason, not failed
    without_rustc = dataclasses.replace(LANGUAGES.get("rust"), toolchain=(("/nonexistent/rustc", "install Debian's rustc"),))
    monkeypatch.setitem(LANGUAGES._items, "rust", without_rustc)
    report = evaluate_model("models:/lathe-code/1", cfg, tmp_path / "ev", ["humaneval", "humaneval-js", "humaneval-rust"])
    assert report["benchmarks"]["humaneval-rust"] == {"skipped": "rust needs /nonexistent/rustc: install Debian's rustc"}
    assert report["problems"] == 2 and (tmp_path / "ev" / "model" / "model.safetensors").is_file()
    assert len((tmp_path / "ev" / "samples.jsonl").read_text().splitlines()) == 2
    # per language: the JavaScript translation generated with its own stop sequence, scored by Node.js, charted
    js = report["benchmarks"]["humaneval-js"]
    assert js["problems"] == 2 and "pass@1" in js and sum(js["statuses"].values()) == 2
    completions = [
        json.loads(line)["completion"] for line in (tmp_path / "ev" / "samples-humaneval-js.jsonl").read_text().splitlines()
    ]
    assert len(completions) == 2 and not any("\n}" in c for c in completions)
    assert (tmp_path / "ev" / "languages.png").is_file() and "| humaneval-js |" in (tmp_path / "ev" / "report.md").read_text()
    with pytest.raises(InputError, match="cannot fetch model models:/lathe-code/99"):
        evaluate_model("models:/lathe-code/99", cfg, tmp_path / "ev2")
    with pytest.raises(InputError, match="not a Hugging Face model directory"):
        evaluate_model(str(tmp_path), cfg, tmp_path / "ev3")


def test_package_and_canary_serve_the_staff_version(trained, shards_pipeline) -> None:
    """Through the runner: the gate's `staff` version is packaged, served by tritonserver, and answers under load."""
    from mlflow.tracking import MlflowClient

    profile_dir, _, _ = shards_pipeline
    cfg = load_config(
        None,
        [
            f"run.runs_dir={profile_dir.parent}",
            *SMALL_PIPELINE,
            *MICRO,
            "eval.ks=[1, 2]",
            "eval.generation={limit: 4, n: 2, max_new_tokens: 16, temperature: 0.8}",
            "serve.canary_load={clients: 3, seconds: 2, max_tokens: 8}",
        ],
    )
    outcomes = {o.name: o.status for o in run_pipeline(cfg, ["canary"], console=QUIET)}
    assert outcomes["package"] == "ran" and outcomes["canary"] == "ran" and outcomes["eval"] == "skipped"
    client = MlflowClient(f"sqlite:///{profile_dir.parent / 'mlflow.db'}")
    staff = client.get_model_version_by_alias("lathe-code", "staff")
    package = json.loads((profile_dir / "package" / "package.json").read_text())
    assert (
        package["version"] == int(staff.version)
        and (profile_dir / "package" / "triton" / "lathe-code" / str(staff.version) / "model.py").is_file()
    )
    assert client.get_model_version("lathe-code", str(staff.version)).tags["triton_repository"].endswith("package/triton")
    canary = json.loads((profile_dir / "canary" / "canary.json").read_text())
    assert canary["load"]["failures"] == 0 and canary["load"]["requests"] > 0 and canary["version"] == int(staff.version)
    assert (
        canary["fim"]["prompt_tokens"] > 3 and canary["fim"]["suffix"] == "\n\nprint(fibonacci(10))\n"
    )  # the gateway's FIM answer

    # The package stage is fingerprinted by the version the alias holds: unmoved, it skips ...
    assert {o.name: o.status for o in run_pipeline(cfg, ["package"], console=QUIET)}["package"] == "skipped"
    # ... moved to another version, it repackages that version.
    moved = client.create_model_version("lathe-code", source=staff.source, run_id=staff.run_id)
    client.set_registered_model_alias("lathe-code", "staff", moved.version)
    assert {o.name: o.status for o in run_pipeline(cfg, ["package"], console=QUIET)}["package"] == "ran"
    repackaged = json.loads((profile_dir / "package" / "package.json").read_text())
    assert repackaged["version"] == int(moved.version) != int(staff.version)
    manifest = json.loads((profile_dir / "package" / MANIFEST).read_text())
    assert manifest["observed"] == {"model": "lathe-code", "track": "staff", "version": str(moved.version)}

    # The summary asks every finished stage for its headline, from the manifests.
    from rich.console import Console

    from lathe.pipelines.summary import print_summary, summary_rows

    rows = {stage: (headline, where) for stage, headline, where in summary_rows(profile_dir)}
    # pipeline order; the post-training stages follow when tests/test_posttrain.py ran them in this folder first
    assert list(rows)[:7] == ["data", "tokenizer", "shards", "train", "eval", "package", "canary"]
    assert set(list(rows)[7:]) <= {
        "pairs",
        "sft",
        "sft_eval",
        "preferences",
        "dpo",
        "dpo_eval",
        "quantize",
        "quantize_eval",
        "distill",
        "distill_eval",
    }
    assert rows["package"] == (f"lathe-code v{moved.version} (@staff)", str(profile_dir / "package" / "triton"))
    assert rows["train"][1] == str(profile_dir / "train" / "hf_model") and "val loss" in rows["train"][0]
    assert "0 failed" in rows["canary"][0] and rows["data"][0].startswith(
        f"{json.loads((profile_dir / 'data' / MANIFEST).read_text())['counts']['input']:,} files in"
    )
    console = Console(record=True, width=1000)
    print_summary(profile_dir, console)
    text = console.export_text()
    assert f"Triton answered {canary['prompt']!r} with {canary['completion']!r}" in text
    # ... and ends with the product's task: the served middle at a cursor, next to the code around it
    at_cursor = canary["prompt"] + "<cursor>" + canary["fim"]["suffix"]
    assert text.rstrip().splitlines()[-1] == f"At the cursor in {at_cursor!r}, Triton wrote {canary['fim']['completion']!r}"


def test_int8_variant_and_distilled_student_are_registered_gated_packaged_and_served(trained, shards_pipeline) -> None:
    """quantize -> quantize_eval and distill -> distill_eval through the runner, then both served beside the model."""
    from mlflow.tracking import MlflowClient

    from lathe.core.models import ModelRegistry

    out, _ = trained
    profile_dir, _, _ = shards_pipeline
    client = MlflowClient(f"sqlite:///{profile_dir.parent / 'mlflow.db'}")
    trained_version = json.loads((out / "train_summary.json").read_text())["model_version"]
    client.set_registered_model_alias("lathe-code", "staff", trained_version)  # (the package test moved it)
    student = [
        f"distill.{k}"
        for k in (
            "model={d_model: 64, n_layers: 1, n_heads: 2, max_seq_len: 128}",
            "optimizer.lr=0.01",
            "warmup=2ba",
            "max_duration=16ba",
            "global_train_batch_size=4",
            "device_train_microbatch_size=4",
            "eval_interval=16ba",
            "save_interval=16ba",
            "eval_subset_num_batches=4",
            "wandb.enabled=false",
            "teacher=models:/lathe-code@staff",
            "temperature=2.0",
            "kl_weight=0.8",
            "ce_weight=0.2",
        )
    ]
    cfg = load_config(
        None,
        [
            f"run.runs_dir={profile_dir.parent}",
            *SMALL_PIPELINE,
            *MICRO,
            *student,
            "eval.ks=[1]",
            "eval.generation={limit: 2, n: 1, max_new_tokens: 8, temperature: 0.0}",
            # the variants' gates, not the quality measures (tests/test_training.py's eval test checks those), at their smallest
            "eval.infilling={tasks: 8, max_new_tokens: 8}",
            "eval.bits_per_byte.documents=8",
            "eval.line_completion={tasks: 8, max_new_tokens: 8}",
            "serve.quantization=int8",
            "serve.student=true",
            "serve.quantize={agreement_prompts: 6, agreement_tokens: 16, val_batches: 4, batch_size: 4}",
            "serve.canary_load={clients: 2, seconds: 1, max_tokens: 8}",
        ],
    )
    outcomes = {o.name: o.status for o in run_pipeline(cfg, ["quantize_eval", "distill_eval"], console=QUIET)}
    assert outcomes == {**outcomes, "quantize": "ran", "quantize_eval": "ran", "distill": "ran", "distill_eval": "ran"}
    registry = ModelRegistry("lathe-code", client)

    # int8: smaller, measured against the fp32 model on the same validation batches and on the eval prompts
    q = json.loads((profile_dir / "quantize" / "quantize_summary.json").read_text())
    assert q["parent_version"] == trained_version and q["int8_bytes"] < 0.75 * q["fp32_bytes"]
    assert abs(q["val_loss_ratio"] - 1) < 0.05 and q["val_tokens"] > 1000
    assert q["prompts"] == 6 and q["token_agreement"] > 0.5, q
    tags = registry.tags(q["model_version"])
    assert tags["lathe.method"] == "int8" and tags["lathe.parent_version"] == trained_version
    assert tags["lathe.tokenizer"] == registry.tags(trained_version)["lathe.tokenizer"] and tags["gate"] == "passed"
    assert registry.find("staff-int8") == q["model_version"] and registry.find("staff") == trained_version  # beside, not instead

    # distillation: the student's KL to the teacher fell over training; its lineage names the teacher
    d = json.loads((profile_dir / "distill" / "train_summary.json").read_text())
    assert d["final_val_kl"] < d["initial_val_kl"] and d["teacher_version"] == trained_version
    assert d["parameters"] < json.loads((out / "train_summary.json").read_text())["parameters"]
    tags = registry.tags(d["model_version"])
    assert (
        tags["lathe.method"] == "distill" and tags["lathe.parent_version"] == trained_version and tags["lathe.student_init"] == ""
    )
    assert registry.find("staff-distill") == d["model_version"]
    distill_eval = json.loads((profile_dir / "distill_eval" / "results.json").read_text())
    assert distill_eval["gate"]["alias"] == "staff-distill" and "val_loss" in distill_eval["gate"]["candidate"]

    # served side by side: the canary asks each of the three Triton models and checks it against local generation
    outcomes = {o.name: o.status for o in run_pipeline(cfg, ["canary"], console=QUIET)}
    assert outcomes["package"] == "ran" and outcomes["canary"] == "ran"
    package = json.loads((profile_dir / "package" / "package.json").read_text())
    assert package["variants"].keys() == {"lathe-code-int8", "lathe-code-distill"}
    canary = json.loads((profile_dir / "canary" / "canary.json").read_text())
    assert canary["variants"]["lathe-code-int8"]["version"] == int(q["model_version"])
    assert canary["variants"]["lathe-code-distill"]["token_ids"] and canary["load"]["failures"] == 0

    # promotion carries the variants along; a stale int8 variant (of another version) is not served, and says why
    registry.promote()
    assert registry.find("production-int8") == q["model_version"] and registry.find("production-distill") == d["model_version"]
    client.set_registered_model_alias("lathe-code", "staff", d["model_version"])
    assert {o.name: o.status for o in run_pipeline(cfg, ["package"], console=QUIET)}["package"] == "ran"
    package = json.loads((profile_dir / "package" / "package.json").read_text())
    assert package["variants"].keys() == {"lathe-code-distill"} and package["not_served"] == {
        "lathe-code-int8": f"`staff-int8` holds version {q['model_version']}, quantised from version {trained_version}, but `staff` "
        f"holds version {d['model_version']}: `lathe run quantize_eval` quantises it"
    }
    client.set_registered_model_alias("lathe-code", "staff", trained_version)
    for alias in ("production", "production-int8", "production-distill"):  # later tests' gates expect no production
        client.delete_registered_model_alias("lathe-code", alias)
