"""Composer callbacks and logger destinations: loss spikes, sparse training metrics, a JSONL metrics log, MLflow."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from composer.core import Callback, State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist

from lathe.training.config import LossSpikeConfig


def sample_digest(tokens: Any) -> str:
    """SHA-1 of a sample's token ids (int64), to prove a replay reads the same data."""
    import numpy as np

    return hashlib.sha1(np.asarray(tokens, dtype=np.int64).tobytes()).hexdigest()


@dataclass
class SpikeVerdict:
    """The detector's view of one batch loss."""

    spike: bool
    mean: float
    std: float


class SpikeDetector:
    """A loss is a spike when it exceeds mean + sigmas * std of the last ``window`` normal losses
    (and mean * min_ratio). Spikes are not added to the window, so one spike does not hide the next."""

    def __init__(self, cfg: LossSpikeConfig) -> None:
        self.cfg = cfg
        self.recent: deque[float] = deque(maxlen=cfg.window)

    def update(self, loss: float) -> SpikeVerdict:
        """Judge ``loss`` against the window, then (if normal) add it."""
        if len(self.recent) < self.cfg.window:
            self.recent.append(loss)
            return SpikeVerdict(False, math.nan, math.nan)
        mean = sum(self.recent) / len(self.recent)
        std = math.sqrt(sum((x - mean) ** 2 for x in self.recent) / len(self.recent))
        spike = not math.isfinite(loss) or (loss > mean + self.cfg.sigmas * std and loss > mean * self.cfg.min_ratio)
        if not spike:
            self.recent.append(loss)
        return SpikeVerdict(spike, mean, std)


class LossSpikeMonitor(Callback):
    """Detects loss spikes, logs the offending batch's sample indices (stream, shard, position), and
    optionally skips that batch's optimizer step or stops training.

    The decision uses the loss averaged over every rank, so all ranks agree on it.
    """

    def __init__(self, cfg: LossSpikeConfig, log_path: Path, dataset: Any) -> None:
        self.cfg, self.log_path, self.dataset = cfg, log_path, dataset
        self.detector = SpikeDetector(cfg)
        self._loss_sum, self._samples = 0.0, 0
        self.spikes = 0

    def after_loss(self, state: State, logger: Logger) -> None:
        n = int(state.batch["input_ids"].shape[0])
        self._loss_sum += float(state.loss.detach()) * n if isinstance(state.loss, torch.Tensor) else 0.0
        self._samples += n

    def after_train_batch(self, state: State, logger: Logger) -> None:
        total = torch.tensor([self._loss_sum, float(self._samples)], dtype=torch.float64)
        self._loss_sum, self._samples = 0.0, 0
        dist.all_reduce(total)
        loss = float(total[0] / total[1])
        verdict = self.detector.update(loss)
        if not verdict.spike:
            return
        self.spikes += 1
        rows = state.batch["input_ids"].cpu().numpy()
        mine = [(int(i), sample_digest(row)) for i, row in zip(state.batch["sample_idx"].tolist(), rows)]
        gathered = [pair for part in dist.all_gather_object(mine) for pair in part]
        step = int(state.timestamp.batch)
        action = self.cfg.action
        if dist.get_global_rank() == 0:
            record = {
                "step": step,
                "loss": loss,
                "window_mean": verdict.mean,
                "window_std": verdict.std,
                "action": action,
                "samples": [
                    {"index": i, "stream": st, "shard": s, "position": p, "sha1": digest}
                    for i, digest in gathered
                    for st, s, p in [self.dataset.locate(i)]
                ],
            }
            with self.log_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        logger.log_metrics({"loss_spike/count": float(self.spikes), "loss_spike/loss": loss})
        if action in ("skip", "stop"):
            # No gradient, no update: the optimizers skip parameters whose grad is None.
            for p in state.model.parameters():
                p.grad = None
        if action == "stop":
            state.stop_training()


class TrainMetricsEvery(Callback):
    """Training metrics (cross-entropy and perplexity over the logits) on one batch in ``every``.

    Composer updates and logs ``state.train_metrics`` on every batch when there are any: a
    softmax over batch x seq x vocab logits and a cross-rank sync each step (~5% of a step on
    the tiny model). The loss itself is logged every batch regardless. Between log batches
    the metrics are set aside (an empty dict, which Composer skips) and put back for the next.
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self._metrics: dict[str, Any] | None = None

    def batch_start(self, state: State, logger: Logger) -> None:
        if self._metrics is None:
            self._metrics = dict(state.train_metrics or {})
        state.train_metrics = self._metrics if int(state.timestamp.batch) % self.every == 0 else {}

    def fit_end(self, state: State, logger: Logger) -> None:
        if self._metrics is not None:
            state.train_metrics = self._metrics  # checkpoints and callers after fit see them all


class TimeBudget(Callback):
    """Fits ``max_duration`` to a wall-clock budget from the measured step time.

    After ``skip`` warm-up batches it times the batches that follow; at ``probe``, ``2 x probe``,
    ``4 x probe``, ... timed batches, while less than half the budget is spent, it sets
    ``max_duration`` to the batches that fit in what is left (never above the configured ceiling).
    The estimate sharpens as the run goes (a machine shared with other work speeds up or slows
    down), and it stops moving in the second half, where the learning rate decays. Composer's
    schedulers read ``max_duration`` at every step, so the cosine decay ends at its floor on time
    instead of being cut off. Rank 0 decides and every rank takes its number: ranks that disagreed
    on the length would wait on each other forever.
    """

    def __init__(self, seconds: float, probe: int = 20, skip: int = 3, margin: float = 0.97) -> None:
        self.seconds, self.probe, self.skip, self.margin = seconds, probe, skip, margin
        self.started = 0.0
        self.timing_from = 0.0
        self.batches = 0
        self.next_fit = skip + probe
        self.ceiling = 0  # the configured max_duration, in batches

    def fit_start(self, state: State, logger: Logger) -> None:
        from composer.core import TimeUnit

        assert state.max_duration is not None and state.max_duration.unit == TimeUnit.BATCH  # the config asks for <n>ba
        self.started, self.batches, self.next_fit = time.perf_counter(), 0, self.skip + self.probe
        self.ceiling = int(state.max_duration.value)

    def batch_end(self, state: State, logger: Logger) -> None:
        from composer.core import Time, TimeUnit

        self.batches += 1
        now = time.perf_counter()
        if self.batches == self.skip:
            self.timing_from = now
        if self.batches != self.next_fit:
            return
        timed = self.batches - self.skip
        self.next_fit = self.skip + 2 * timed
        if now - self.started > self.seconds / 2 and timed > self.probe:
            return  # the decay has begun: the length stays as last fitted
        per_batch = (now - self.timing_from) / timed
        left = (self.seconds - (now - self.started)) * self.margin
        chosen = [min(self.ceiling, int(state.timestamp.batch) + max(1, int(left / per_batch)))]
        dist.broadcast_object_list(chosen, src=0)
        state.max_duration = Time(chosen[0], TimeUnit.BATCH)
        logger.log_metrics({"time_budget/batches": chosen[0], "time_budget/seconds_per_batch": per_batch})


class JsonlLogger(LoggerDestination):
    """Every logged metric as a JSON line (step, metrics): easy to diff between runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if dist.get_global_rank() != 0:
            return
        clean = {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}
        with self.path.open("a") as fh:
            fh.write(json.dumps({"step": step, **clean}) + "\n")


class MLflowRunLogger(LoggerDestination):
    """Metrics into an existing MLflow run (the stage's child run), from rank 0 of any process.

    Composer's own MLFlowLogger opens a run of its own; this one writes into the run the
    lathe runner already opened, whichever process (or node) rank 0 is.
    """

    def __init__(self, tracking_uri: str, run_id: str, flush_every: int = 20) -> None:
        self.tracking_uri, self.run_id, self.flush_every = tracking_uri, run_id, flush_every
        self._buffer: list[Any] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if dist.get_global_rank() != 0:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            value = float(value.item() if isinstance(value, torch.Tensor) else value)
            if math.isfinite(value):
                self._buffer.append(Metric(key.replace("/", "."), value, now, step or 0))
        if len(self._buffer) >= self.flush_every * 10:
            self.flush()

    def flush(self) -> None:
        """Send buffered metrics (MLflow takes at most 1000 per call)."""
        if not self._buffer:
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        for start in range(0, len(self._buffer), 1000):
            client.log_batch(self.run_id, metrics=self._buffer[start : start + 1000])
        self._buffer = []

    def batch_end(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) % self.flush_every == 0:
            self.flush()

    def close(self, state: State, logger: Logger) -> None:
        self.flush()
