"""Composer's overhead: tokens/s of the Composer trainer vs. a plain PyTorch loop on the same
model, data and batch (steady state, after warm-up batches).

Run by `make bench` after `make all` (it reads runs/<profile>/shards and the tokenizer):

    .venv/bin/python benchmarks/train_bench.py [--runs runs/tiny] [--config configs/tiny.yaml] [--batches 30] [--repeat 2]

The two loops alternate ``--repeat`` times and each keeps its best run, so a burst of load
from another process on a shared machine does not decide the ratio. Composer runs with
lathe's training-metrics setting (``train.train_metrics_every``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from composer import Trainer
from composer.algorithms import GradientClipping
from composer.core import Callback
from composer.utils import reproducibility
from streaming.base.util import clean_stale_shared_memory

from benchmarks.common import emit
from lathe.pipelines.config import load_config
from lathe.pipelines.runner import finished
from lathe.tokenizer.special import EOS, PAD
from lathe.tokenizer.vocab import load_tokenizer
from lathe.training.callbacks import TrainMetricsEvery
from lathe.training.data import build_dataloader
from lathe.training.model import build_model
from lathe.training.optim import build_optimizer

WARMUP = 5


class BatchClock(Callback):
    """Wall time and real tokens of every batch."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []

    def batch_end(self, state, logger) -> None:
        self.marks.append((time.perf_counter(), int((state.batch["labels"] != -100).sum())))


def steady_tokens_per_s(marks: list[tuple[float, int]]) -> float:
    """Tokens/s over the batches after the warm-up ones."""
    (t0, _), rest = marks[WARMUP - 1], marks[WARMUP:]
    return sum(n for _, n in rest) / (rest[-1][0] - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--config", type=Path, default=Path("configs/tiny.yaml"))
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs of each loop; the best counts")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/train_bench.json"))
    args = parser.parse_args()
    cfg = load_config(args.config)
    tc = cfg.train
    tok = load_tokenizer(finished("tokenizer", args.runs / "tokenizer").path("tokenizer"))
    pad, eos, vocab = tok.token_to_id(PAD), tok.token_to_id(EOS), tok.get_vocab_size()
    shards = finished("shards", args.runs / "shards")
    splits = [(f"{shards.uri('mds').rstrip('/')}/{s['name']}/train", None) for s in shards.details["streams"]]
    batch = tc.global_train_batch_size

    def plain_loop() -> float:
        """Plain PyTorch: the loop a user would write."""
        reproducibility.seed_all(tc.seed)
        model = build_model(tc.model, vocab, eos, pad, cfg.shards.seq_len).model
        opt = build_optimizer(model.parameters(), tc.optimizer)
        spec, _ = build_dataloader(splits, Path("/tmp"), batch, True, tc.seed, pad, 0)
        marks = []
        model.train()
        for i, b in enumerate(spec.dataloader):
            if i == args.batches:
                break
            loss = model(input_ids=b["input_ids"], labels=b["labels"]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            marks.append((time.perf_counter(), int((b["labels"] != -100).sum())))
        clean_stale_shared_memory()
        return steady_tokens_per_s(marks)

    def composer_loop() -> float:
        """Composer: the same model, optimizer, data and batch."""
        reproducibility.seed_all(tc.seed)
        wrapped = build_model(tc.model, vocab, eos, pad, cfg.shards.seq_len)
        spec, _ = build_dataloader(splits, Path("/tmp"), batch, True, tc.seed, pad, 0)
        clock = BatchClock()
        trainer = Trainer(
            model=wrapped,
            train_dataloader=spec,
            max_duration=f"{args.batches}ba",
            optimizers=build_optimizer(wrapped.parameters(), tc.optimizer),
            algorithms=[GradientClipping(clipping_type="norm", clipping_threshold=tc.grad_clip_norm)],
            callbacks=[clock, TrainMetricsEvery(tc.train_metrics_every)],
            device="cpu",
            precision="fp32",
            device_train_microbatch_size=batch,
            progress_bar=False,
            log_to_console=False,
            seed=tc.seed,
        )
        trainer.fit()
        trainer.close()
        clean_stale_shared_memory()
        return steady_tokens_per_s(clock.marks)

    plain_runs, composer_runs = [], []
    for _ in range(args.repeat):
        plain_runs.append(plain_loop())
        composer_runs.append(composer_loop())
    plain, composer_tps = max(plain_runs), max(composer_runs)
    report = {
        "model": tc.model.model_dump(),
        "batch": batch,
        "seq_len": cfg.shards.seq_len,
        "batches": args.batches,
        "plain_pytorch_tokens_per_s": round(plain),
        "composer_tokens_per_s": round(composer_tps),
        "ratio_composer_over_plain": round(composer_tps / plain, 3),
        "train_metrics_every": tc.train_metrics_every,
        "runs_plain": [round(r) for r in plain_runs],
        "runs_composer": [round(r) for r in composer_runs],
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
