"""Typed configuration of evaluation and its sandbox."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from lathe.core.config import Strict


class SandboxConfig(Strict):
    """Limits for one untrusted program (each runs in its own namespaces, see eval/sandbox.py)."""

    wall_s: float = Field(
        10.0,
        gt=0,
        description="Wall-clock limit; the whole process tree is killed after it. A compiled language's compile "
        "step has the same limits, its own wall clock and CPU time included.",
    )
    cpu_s: int = Field(8, gt=0, description="CPU seconds (RLIMIT_CPU).")
    memory_mb: int = Field(
        1024,
        gt=0,
        description="Address space (RLIMIT_AS); a language whose runtime or compiler cannot start in less gets "
        "its minimum (eval/languages.py).",
    )
    nproc: int = Field(32, gt=0, description="Processes of the sandbox user (RLIMIT_NPROC): stops fork bombs.")
    fsize_mb: int = Field(16, gt=0, description="Largest file it may write, output included (RLIMIT_FSIZE).")
    nofile: int = Field(64, gt=0, description="Open files (RLIMIT_NOFILE).")
    output_bytes: int = Field(16_384, gt=0, description="Stdout/stderr kept per program.")
    python: str = Field("/usr/bin/python3", description="Interpreter inside the sandbox (world-readable; stdlib only).")
    base_uid: int = Field(61000, gt=0, description="Sandboxes run as uids base_uid .. base_uid + uid_pool - 1 (never root).")
    uid_pool: int = Field(4096, gt=0, description="How many uids the sandboxes rotate through.")
    fork_server: bool = Field(
        True,
        description="Python programs run in long-lived sandboxed workers that fork a fresh process tree with fresh "
        "namespaces per program (no interpreter start per program); false: one bubblewrap per program, same guarantees, slower.",
    )
    worker_runs: int = Field(
        200,
        gt=0,
        description="Programs one fork-server worker runs before a fresh one replaces it "
        "(a program that leaves its worker in doubt gets it replaced at once).",
    )
    compile_cache_mb: int = Field(
        512,
        ge=0,
        description="Compiled programs a sandbox keeps so that an identical program text compiles once; beyond "
        "this the least recently used are removed.",
    )
    allow_weak_isolation: bool = Field(
        False, description="Run without namespaces when bubblewrap cannot start. Unsafe: for trusted code only."
    )
    toolchains: str = Field(
        "",
        description="Host folder of the npm-installed compilers (TypeScript's); empty: `make setup`'s eval/toolchains "
        "beside lathe.eval. Sandboxed steps see it read-only at a fixed path of their own, wherever it is on the host.",
    )


class GenerationConfig(Strict):
    """Sampling completions from the model."""

    n: int = Field(1, gt=0, description="Samples per problem.")
    temperature: float = Field(0.2, ge=0, description="0 = greedy.")
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(8, gt=0, description="Prompts per generate() call.")
    stop: list[str] | None = Field(
        None,
        description="A completion is cut at the first of these (and at end of text); None = the benchmark "
        "language's own (Python: a new top-level def, class, if, print or comment; C-like languages: the function's closing brace).",
    )
    seed: int = 1234
    limit: int | None = Field(None, gt=0, description="Only the first N problems of each benchmark (quick profiles); None = all.")


class GateConfig(Strict):
    """Promotion gate against the model version holding the `production` alias."""

    min_pass_at_1_gain: float = Field(0.0, description="Candidate pass@1 must be >= production's + this.")
    max_language_regression: float | None = Field(
        None,
        ge=0,
        description="With several benchmarks: no benchmark's pass@1 may fall more than this below production's "
        "on it (None: only the first benchmark's pass@1 gates).",
    )
    max_val_loss_increase: float = Field(
        0.0, description="Candidate validation loss must be <= production's + this (decides for models that solve nothing)."
    )
    max_replay_val_loss_increase: float = Field(
        0.05,
        description="On the earlier snapshots' validation data, candidate loss must be <= production's + this: "
        "a retrain may trade a little of the old code for the new, not forget it.",
    )
    # Figures measured per task (infilling) or per document (bits per byte) on both models: the gate refuses a
    # candidate only when the paired bootstrap interval of the difference lies wholly on the worse side of the
    # margin, so a tie within noise passes and a real regression does not.
    max_infill_pass_drop: float = Field(
        0.0, ge=0, description="Infilling pass@1 may fall at most this far below production's (a share, 0.01 = 1 point)."
    )
    max_infill_edit_similarity_drop: float = Field(
        0.0, ge=0, description="Infilling edit similarity (0-100) may fall at most this far below production's."
    )
    max_bits_per_byte_increase: float = Field(
        0.0, ge=0, description="Held-out bits per byte may rise at most this far above production's on the same bytes."
    )
    min_language_documents: int = Field(
        8,
        ge=1,
        description="Bits per byte is also gated per language with at least this many held-out documents on both models "
        "(fewer: reported, not gated; one document's bits are no sample of a language).",
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="Coverage of the paired bootstrap interval.")
    bootstrap_resamples: int = Field(2000, ge=100, description="Resamples (tasks or documents, with replacement).")


FimMode = Literal["psm", "spm"]


def _both_modes() -> list[FimMode]:
    return ["psm", "spm"]


class InfillingConfig(Strict):
    """The product's own task, measured on every candidate: HumanEval single-line infilling (eval/infilling.py),
    greedy middles in each FIM mode, beside the trivial floors (an empty middle, the line above) on the same tasks."""

    enabled: bool = Field(True, description="Measure infilling in the eval stage (and, with a production version, gate on it).")
    tasks: int = Field(
        48,
        gt=0,
        description="A fixed, seeded subset of the single-line set's 1,033 tasks (48: 96 greedy middles and ~300 sandboxed "
        "programs with the floors, about a minute on 2 CPU cores for the tiny model; the gate's bootstrap needs dozens).",
    )
    seed: int = Field(0, description="Picks the subset: the same seed measures every candidate and production on the same tasks.")
    modes: list[FimMode] = Field(
        default_factory=_both_modes, min_length=1, description="FIM prompt layouts, each measured (and gated) on its own."
    )
    max_new_tokens: int = Field(24, gt=0, description="Token budget of one middle (a single line needs far fewer).")


class BitsPerByteConfig(Strict):
    """The model's bits per byte on held-out documents (the validation documents of the new data's stream, as
    the shards stage kept them; eval/held_out.py), beside gzip -9 and xz -9e on the same bytes, overall and per
    language. The same documents are line completion's (:class:`LineCompletionConfig`)."""

    enabled: bool = Field(True, description="Measure bits per byte when the trainer's summary names validation streams.")
    documents: int = Field(32, gt=0, description="At most this many documents, the first in a seeded order of their ids.")
    max_bytes: int = Field(
        262_144, gt=0, description="Stop adding documents once this many bytes are taken (bounds the CPU time of scoring)."
    )


class LineCompletionConfig(Strict):
    """Line completion on the held-out documents (eval/line_completion.py): each cut at a seeded point inside a
    line, the model completes that line; exact match and edit similarity per language, beside the previous-line
    floor, and production's on the same tasks."""

    enabled: bool = Field(True, description="Measure line completion when there are held-out documents.")
    tasks: int = Field(32, gt=0, description="At most this many tasks, one per held-out document.")
    seed: int = Field(0, description="Picks each document's line and column: every model is measured on the same cuts.")
    max_new_tokens: int = Field(32, gt=0, description="Token budget of one line's rest.")


class EvalConfig(Strict):
    """HumanEval scoring."""

    benchmarks: list[str] = Field(
        default_factory=lambda: ["humaneval"],
        min_length=1,
        description="Benchmarks the eval stage runs (eval/benchmarks.py: humaneval, humaneval-js, humaneval-ts, humaneval-java, "
        "humaneval-cpp, humaneval-rust); the first one's pass@k is the model's headline and gates it.",
    )

    @field_validator("benchmarks")
    @classmethod
    def _registered(cls, names: list[str]) -> list[str]:
        from lathe.core.errors import LatheError
        from lathe.eval.benchmarks import BENCHMARKS  # on use: eval.benchmarks imports the language runners

        for name in names:
            try:
                BENCHMARKS.get(name)
            except LatheError as exc:
                raise ValueError(str(exc)) from None  # pydantic reports a ValueError as the field's error
        return names

    ks: list[int] = Field(default_factory=lambda: [1, 10, 100], description="pass@k reported for each k <= n.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    infilling: InfillingConfig = Field(default_factory=InfillingConfig)
    bits_per_byte: BitsPerByteConfig = Field(default_factory=BitsPerByteConfig)
    line_completion: LineCompletionConfig = Field(default_factory=LineCompletionConfig)
    workers: int | None = Field(None, gt=0, description="Parallel sandboxes; None = the machine's cores.")
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)


def _sampling() -> GenerationConfig:
    return GenerationConfig(n=8, temperature=0.8, max_new_tokens=128)


class PreferencesConfig(Strict):
    """Execution-feedback preferences (the `preferences` stage): completions sampled from the model DPO
    starts from (``dpo.init_from``, so the pairs are on-policy) for the mined problems that have doctests,
    run in the sandbox; a passing and a failing completion of one prompt make a pair."""

    execution: bool = Field(
        True, description="Build pairs from execution feedback (off: only the pairs stage's preference files)."
    )
    max_problems: int | None = Field(
        None,
        gt=0,
        description="Use at most this many problems (by pair id) of those whose own body passes its tests; None = all.",
    )
    generation: GenerationConfig = Field(
        default_factory=_sampling,
        description="Sampling: n completions per problem; a higher temperature gives more problems with both outcomes.",
    )
    max_pairs_per_problem: int = Field(4, gt=0, description="So one prompt cannot dominate the pairs.")
    author_solution: bool = Field(
        True,
        description="Count the mined function's own body (which passes its tests) as one more passing completion, "
        "so a problem the model never solves still gives a pair: the author's body chosen over a failing sample.",
    )
    workers: int | None = Field(None, gt=0, description="Parallel sandboxes; None = the machine's cores.")
    self_play: int = Field(
        0,
        ge=0,
        description="Also pair the author's body (chosen) with the model's own completion (rejected) for up to "
        "this many mined pairs without tests (SPIN-style self-play); 0 = execution feedback only.",
    )
