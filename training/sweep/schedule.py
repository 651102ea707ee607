"""The sweep's scheduling model: which option (device count, parallelism) each candidate trains with,
on which devices and from when, so that the last candidate finishes as early as possible.

A multi-mode scheduling problem on identical devices, solved exactly by OR-Tools CP-SAT:

- per candidate j and each of its feasible options o (d_o devices, predicted p_o seconds) a literal
  ``mode[j, o]`` and an optional interval [s_j, s_j + p_o) present when it is true; exactly one
  mode per candidate;
- ``add_cumulative`` over those intervals (demand d_o, capacity D): at no time do the running
  candidates take more devices than there are;
- the makespan is at least every chosen end and at least the device-seconds used over D (a
  redundant bound), and is minimised.

Which devices: the devices are identical and a job may take any d of them, so every schedule the
cumulative constraint allows has a device assignment, found by walking the starts in order and giving
each job the lowest-numbered devices free at its start (as many are free as the constraint left).
That keeps the model free of the D! symmetric relabellings a per-device model would make CP-SAT
search through: on random instances of 16 jobs x 5 options on 64 devices it proved optimality in
about 3 s here, where a per-device model stalled at a 46% gap after 10 s.
``check_plan`` verifies the result: no device runs two jobs at once.

Re-planning adds the jobs still running as fixed intervals from 0 on their devices. The solver gets
a time limit; the best plan found is used and its gap to the proven lower bound reported.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lathe.core.errors import LatheError

# Durations are solved in integer ticks of this many seconds: 0.1 s keeps tiny jobs apart and a
# day-long job still fits comfortably in CP-SAT's 64-bit domains.
TICK_S = 0.1


@dataclass(frozen=True)
class Option:
    """One way to run a candidate, with the duration the profiler predicts for it."""

    devices: int  # GPUs (or CPU cores) the job takes
    parallelism: str  # ddp | fsdp_full_shard | fsdp_shard_grad_op
    activation_checkpointing: bool
    seconds: float  # predicted wall time of the whole job on this option

    @property
    def label(self) -> str:
        """E.g. ``2x fsdp_full_shard+ac``."""
        return f"{self.devices}x {self.parallelism}{'+ac' if self.activation_checkpointing else ''}"


@dataclass(frozen=True)
class Job:
    """A candidate to schedule: its feasible options (the infeasible ones never reach the solver)."""

    name: str
    options: tuple[Option, ...]


@dataclass(frozen=True)
class Busy:
    """Devices taken by a job already running when re-planning, until ``until`` seconds from now."""

    name: str
    devices: tuple[int, ...]
    until: float


@dataclass
class Assignment:
    """Where and when the plan runs one candidate."""

    name: str
    option: Option
    devices: tuple[int, ...]
    start: float
    end: float


@dataclass
class Plan:
    """A solved schedule: the assignments, the makespan and how far from optimal it may be."""

    assignments: list[Assignment]
    makespan: float
    lower_bound: float
    status: str  # OPTIMAL | FEASIBLE
    solve_s: float
    devices: int
    busy: list[Busy] = field(default_factory=list)

    @property
    def gap(self) -> float:
        """Relative optimality gap: 0 when proven optimal."""
        return 0.0 if self.makespan <= 0 else max(0.0, (self.makespan - self.lower_bound) / self.makespan)

    def by_name(self) -> dict[str, Assignment]:
        """Assignments keyed by candidate name."""
        return {a.name: a for a in self.assignments}

    def to_json(self) -> dict[str, Any]:
        """The plan as plan.json keeps it."""
        return {
            "makespan_s": self.makespan,
            "lower_bound_s": self.lower_bound,
            "gap": self.gap,
            "status": self.status,
            "solve_s": self.solve_s,
            "devices": self.devices,
            "busy": [asdict(b) for b in self.busy],
            "candidates": [
                {
                    "name": a.name,
                    "option": a.option.label,
                    "parallelism": a.option.parallelism,
                    "activation_checkpointing": a.option.activation_checkpointing,
                    "devices": list(a.devices),
                    "start_s": a.start,
                    "duration_s": a.end - a.start,
                }
                for a in self.assignments
            ],
        }


def _ticks(seconds: float) -> int:
    return max(1, math.ceil(seconds / TICK_S - 1e-9))


def solve(
    jobs: list[Job],
    devices: int,
    busy: list[Busy] | None = None,
    time_limit_s: float = 10.0,
    workers: int | None = None,
    seed: int = 0,
) -> Plan:
    """The minimum-makespan plan for ``jobs`` on ``devices`` identical devices (some busy until a time).

    Raises a LatheError naming the job when a job has no option that fits on the devices.
    """
    from ortools.sat.python import cp_model

    busy = busy or []
    for job in jobs:
        if not any(o.devices <= devices for o in job.options):
            raise LatheError(
                f"candidate {job.name} has no feasible option on {devices} device(s) (every trial ran out "
                "of memory or failed); give it fewer parameters or more devices"
            )
    horizon = sum(max(_ticks(o.seconds) for o in j.options) for j in jobs) + max((_ticks(b.until) for b in busy), default=0)
    model = cp_model.CpModel()
    makespan = model.new_int_var(0, horizon, "makespan")
    # Re-planning: the running jobs hold their devices from now until their predicted end.
    intervals = [model.new_fixed_size_interval_var(0, _ticks(b.until), f"busy_{b.name}") for b in busy]
    demands = [len(b.devices) for b in busy]
    modes: dict[str, list[tuple[Option, Any]]] = {}
    starts: dict[str, Any] = {}
    for j in jobs:
        starts[j.name] = start = model.new_int_var(0, horizon, f"start_{j.name}")
        modes[j.name] = []
        for i, o in enumerate(o for o in j.options if o.devices <= devices):
            p, mode = _ticks(o.seconds), model.new_bool_var(f"mode_{j.name}_{i}")
            model.add(makespan >= start + p).only_enforce_if(mode)
            intervals.append(model.new_optional_fixed_size_interval_var(start, p, mode, f"run_{j.name}_{i}"))
            demands.append(o.devices)
            modes[j.name].append((o, mode))
        model.add_exactly_one(m for _, m in modes[j.name])
    model.add_cumulative(intervals, demands, devices)
    # Redundant energy bound (device-seconds used <= devices x makespan): CP-SAT's own relaxation of the
    # cumulative misses it with optional modes, and it is what proves a plan optimal at scale.
    busy_area = sum(_ticks(b.until) * len(b.devices) for b in busy)
    model.add(devices * makespan >= busy_area + sum(o.devices * _ticks(o.seconds) * m for ms in modes.values() for o, m in ms))
    model.minimize(makespan)

    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = workers or max(1, min(8, os.cpu_count() or 1))
    solver.parameters.random_seed = seed
    began = time.perf_counter()
    status = solver.solve(model)
    took = time.perf_counter() - began
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise LatheError(
            f"the sweep's scheduler found no plan in {time_limit_s:g} s (status {solver.status_name(status)}); "
            "raise sweep.solver_time_limit_s"
        )
    placed = []
    for j in jobs:
        (option,) = [o for o, m in modes[j.name] if solver.boolean_value(m)]
        start_s = solver.value(starts[j.name]) * TICK_S
        placed.append((j.name, option, start_s, start_s + _ticks(option.seconds) * TICK_S))
    assignments = assign_devices(placed, devices, busy)
    return Plan(
        assignments,
        solver.objective_value * TICK_S,
        solver.best_objective_bound * TICK_S,
        "OPTIMAL" if status == cp_model.OPTIMAL else "FEASIBLE",
        took,
        devices,
        list(busy),
    )


def assign_devices(placed: list[tuple[str, Option, float, float]], devices: int, busy: list[Busy]) -> list[Assignment]:
    """Specific devices for jobs whose (start, end) already respect the device count at every instant:
    in order of start, each takes the lowest-numbered devices free by then."""
    free_at = [0.0] * devices
    for b in busy:
        for k in b.devices:
            free_at[k] = b.until
    assignments = []
    for name, option, start, end in sorted(placed, key=lambda p: (p[2], p[0])):
        free = [k for k in range(devices) if free_at[k] <= start + 1e-9]
        if len(free) < option.devices:  # the cumulative constraint rules this out; never paper over it
            raise AssertionError(f"{name} needs {option.devices} devices at {start:.1f} s, {len(free)} are free")
        taken = tuple(free[: option.devices])
        for k in taken:
            free_at[k] = end
        assignments.append(Assignment(name, option, taken, start, end))
    return assignments


def sequential_makespan(jobs: list[Job], devices: int) -> float:
    """Today's practice: one candidate after another, each on every device (its fastest option using
    all of them; a candidate that cannot use them all gets its fastest feasible option)."""
    total = 0.0
    for j in jobs:
        full = [o.seconds for o in j.options if o.devices == devices]
        total += min(full or [o.seconds for o in j.options if o.devices <= devices])
    return total


def even_split_makespan(jobs: list[Job], devices: int) -> float:
    """The other common practice: the devices split evenly, each share runs its candidates in turn.

    With more devices than candidates each gets ``devices // n`` (its fastest option on at most that
    many); with fewer, the candidates queue round-robin on single devices.
    """
    lanes = min(len(jobs), devices)
    share = devices // lanes
    finish = [0.0] * lanes
    for i, j in enumerate(jobs):
        fits = [o.seconds for o in j.options if o.devices <= share]
        finish[i % lanes] += min(fits) if fits else math.inf
    return max(finish)


def check_plan(plan: Plan) -> list[str]:
    """Every way the plan breaks the model's rules (empty: none): devices double-booked, a device
    count other than the option's, a device out of range."""
    problems = []
    spans: dict[int, list[tuple[float, float, str]]] = defaultdict(list)
    for b in plan.busy:
        for k in b.devices:
            spans[k].append((0.0, b.until, b.name))
    for a in plan.assignments:
        if len(set(a.devices)) != a.option.devices:
            problems.append(f"{a.name} runs on {len(set(a.devices))} devices, its option needs {a.option.devices}")
        for k in a.devices:
            if not 0 <= k < plan.devices:
                problems.append(f"{a.name} is on device {k}, outside 0..{plan.devices - 1}")
            spans[k].append((a.start, a.end, a.name))
    for k, intervals in spans.items():
        intervals.sort()
        for (_, e1, n1), (s2, _, n2) in zip(intervals, intervals[1:]):
            if s2 < e1 - 1e-9:
                problems.append(f"device {k} runs {n1} and {n2} at once ({s2:.1f} s < {e1:.1f} s)")
    return problems


def draw_gantt(plan: Plan, path: Path, measured: dict[str, tuple[float, float]] | None = None, title: str = "sweep plan") -> Path:
    """The plan as a Gantt chart (one row per device); ``measured`` (name -> start, end in seconds)
    adds what actually ran, hatched, under each planned bar."""
    from lathe.core.plots import pyplot

    plt = pyplot()
    colours = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.5 * plan.devices))
    for i, a in enumerate(plan.assignments):
        for k in a.devices:
            ax.barh(
                k + (0.18 if measured else 0),
                a.end - a.start,
                left=a.start,
                height=0.36 if measured else 0.8,
                color=colours(i % 20),
                edgecolor="black",
                linewidth=0.5,
            )
            ax.text(
                a.start + 0.01 * plan.makespan,
                k + (0.18 if measured else 0),
                f"{a.name} ({a.option.label})",
                va="center",
                fontsize=7,
            )
            if measured and a.name in measured:
                start, end = measured[a.name]
                ax.barh(
                    k - 0.18,
                    end - start,
                    left=start,
                    height=0.36,
                    color=colours(i % 20),
                    alpha=0.5,
                    hatch="//",
                    edgecolor="black",
                    linewidth=0.5,
                )
    ax.set_yticks(range(plan.devices), [f"device {k}" for k in range(plan.devices)])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title(
        f"{title}: predicted makespan {plan.makespan:.1f} s ({plan.status.lower()}, gap {plan.gap:.1%})"
        + ("; hatched: measured" if measured else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
