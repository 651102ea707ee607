"""Typed configuration of a sweep: the candidate models one retrain trains side by side, and how the
devices are shared among them (profile, solve, run, pick)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from lathe.core.config import Strict, set_key_path
from lathe.core.errors import ConfigError
from lathe.training.config import TrainConfig

# HumanEval (or any evaluation) of a candidate's export: (model dir, output dir, the run's config) -> figures.
Score = Callable[[Path, Path, Any], dict[str, float]]
Parallelism = Literal["ddp", "fsdp_full_shard", "fsdp_shard_grad_op"]
# What the scheduler decides for each candidate; a candidate cannot pin them.
SCHEDULED = ("train.nproc", "train.fsdp", "train.activation_checkpointing")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")


class Candidate(Strict):
    """One named variation of the base `train` section."""

    name: str = Field(description="Names its folder, MLflow child run and bar in the Gantt chart (letters, digits, _.=+-).")
    set: dict[str, Any] = Field(
        default_factory=dict,
        description="train.* key paths and their values for this candidate, e.g. {train.optimizer.lr: 1.0e-3, "
        "train.model.n_layers: 2}; everything else is the base config's.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"candidate name {v!r} may hold only letters, digits and _.=+- (it names a folder)")
        return v


class SweepConfig(Strict):
    """Several candidate models per retrain, scheduled jointly on the devices, the best one gated.

    Candidates are ``candidates`` plus every combination of ``grid``. Each is trialled for a few
    batches on each device count and parallelism choice; a CP-SAT model then picks each one's choice,
    devices and start to minimise the makespan; the jobs run concurrently as planned, re-planned when
    one ends off its prediction; each is evaluated, and the best by ``metric`` is registered.
    """

    enabled: bool = Field(
        False,
        description="Train the candidates instead of the one `train` config (`lathe sweep` "
        "turns it on; so does the DAG's lathe_sweep setting).",
    )
    candidates: list[Candidate] = Field(default_factory=list, description="Named variations of `train`.")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="train.* key path -> values: one candidate per combination (named key=value+...), after `candidates`.",
    )
    devices: int | None = Field(
        None, gt=0, description="Devices to share: GPUs of this node, or CPU cores without GPUs; None = all of them."
    )
    device_counts: list[int] | None = Field(
        None, description="Device counts each candidate is trialled on; None = 1, 2, 4, ... up to `devices`, and `devices`."
    )
    parallelism: list[Parallelism] = Field(
        ["ddp"], min_length=1, description="Parallelism choices to trial (FSDP only on 2 or more devices)."
    )
    activation_checkpointing: list[bool] = Field([False], min_length=1, description="Trial with and/or without it.")
    profile_batches: int = Field(
        8, ge=6, description="Batches per trial; the speed monitor's 5-batch window skips the first ones (warm-up)."
    )
    device_memory_mb: int | None = Field(
        None,
        gt=0,
        description="Each rank's memory budget: a trial (and a job) needing more runs out of memory and "
        "the choice is infeasible. GPUs: a share of the device; CPU: the process's data limit. None = the device's own.",
    )
    solver_time_limit_s: float = Field(
        10.0, gt=0, description="CP-SAT's time limit; the best plan found is used and its optimality gap reported."
    )
    replan_margin: float = Field(
        0.2, ge=0, description="Re-plan the jobs not started yet when one ends this share earlier or later than predicted."
    )
    metric: str = Field(
        "val_loss",
        description="Picks the winner: val_loss (lowest) or a pass@k figure such as pass@1 or humaneval-js/pass@1 (highest).",
    )
    evaluate: bool = Field(
        True, description="Run HumanEval (eval.benchmarks, eval.generation) on every candidate; off: validation loss only."
    )

    @field_validator("device_counts")
    @classmethod
    def _counts(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or min(v) < 1):
            raise ValueError("device_counts must list counts of at least 1")
        return sorted(set(v)) if v is not None else None

    def lower_is_better(self) -> bool:
        """Whether the winner has the lowest ``metric`` (a loss) or the highest (pass@k)."""
        return self.metric.endswith("loss")

    def counts(self, devices: int) -> list[int]:
        """The device counts to trial on ``devices`` devices."""
        if self.device_counts is not None:
            return [d for d in self.device_counts if d <= devices]
        powers = [2**i for i in range(devices.bit_length()) if 2**i <= devices]
        return sorted({*powers, devices})


def _grid_name(combo: dict[str, Any]) -> str:
    """``train.optimizer.lr: 0.001, train.model.n_layers: 2`` -> ``lr=0.001+n_layers=2``."""
    return "+".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in combo.items())


def sweep_candidates(train: TrainConfig, sweep: SweepConfig) -> list[tuple[str, TrainConfig]]:
    """Each candidate's name and full `train` section; one clear line for a bad variation."""
    named = [(c.name, c.set) for c in sweep.candidates]
    keys = list(sweep.grid)
    named += (
        [(_grid_name(combo), combo) for combo in (dict(zip(keys, values)) for values in itertools.product(*sweep.grid.values()))]
        if keys
        else []
    )
    seen: set[str] = set()
    out = []
    for name, changes in named:
        if name in seen:
            raise ConfigError(f"sweep: two candidates are named {name!r}; rename one")
        seen.add(name)
        tree = train.model_dump(mode="json")
        for key, value in changes.items():
            if not key.startswith("train."):
                raise ConfigError(f"sweep candidate {name}: {key} is not a train.* setting (a sweep varies the train section)")
            if key in SCHEDULED:
                raise ConfigError(f"sweep candidate {name}: {key} is the scheduler's to choose per device count; remove it")
            set_key_path(tree, key.split(".")[1:], value, f"sweep candidate {name}")
        try:
            out.append((name, TrainConfig.model_validate(tree)))
        except ValidationError as exc:
            problems = "; ".join(f"train.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"sweep candidate {name}: {problems}") from None
    return out


def candidate_fingerprint(train: TrainConfig, inputs: dict[str, str]) -> str:
    """A candidate's identity: its whole train section and its inputs' fingerprints (the tokenizer and
    shards stages'). A rerun finds the candidates it already trained by it."""
    payload = {"train": train.model_dump(mode="json"), "inputs": dict(sorted(inputs.items()))}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class SweptTrain(Strict):
    """The train stage's section with a sweep on: what decides its output."""

    train: TrainConfig
    sweep: SweepConfig
    evaluation: dict[str, Any] | None = Field(description="The eval section the candidates are scored with (None: not scored).")
