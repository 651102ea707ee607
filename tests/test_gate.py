"""The promotion gate over a real MLflow Model Registry (SQLite store in a temp dir)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lathe.core.errors import LatheError
from lathe.core.models import ModelRegistry
from lathe.eval.config import GateConfig
from lathe.eval.gate import Paired, decide, paired_interval
from lathe.eval.generate import truncate

pytestmark = pytest.mark.integration  # a real MLflow model registry

NAME = "lathe-code"


@pytest.fixture
def client(tmp_path: Path) -> MlflowClient:
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    c.create_registered_model(NAME)
    for _ in range(4):
        c.create_model_version(NAME, source=str(tmp_path / "model"))
    return c


@pytest.fixture
def registry(client: MlflowClient) -> ModelRegistry:
    return ModelRegistry(NAME, client)


def test_gate_moves_staff_only_for_better_candidates_and_promote_moves_production(
    client: MlflowClient, registry: ModelRegistry
) -> None:
    cfg = GateConfig(min_pass_at_1_gain=0.0, max_val_loss_increase=0.05)
    first = decide(registry, "1", {"pass@1": 0.10, "val_loss": 2.0}, cfg)
    assert first.passed and first.reason == "no production version yet"
    assert str(client.get_model_version_by_alias(NAME, "staff").version) == "1"
    # staff first, production only on promote: the registry has no such alias, and lathe names it in one line
    with pytest.raises(MlflowException, match="Registered model alias production not found"):
        client.get_model_version_by_alias(NAME, "production")
    assert registry.find("production") is None
    with pytest.raises(LatheError, match="no version of lathe-code holds the `production` alias"):
        registry.version_of("production")
    assert registry.promote() == "1"
    assert str(client.get_model_version_by_alias(NAME, "production").version) == "1"

    worse = decide(registry, "2", {"pass@1": 0.08, "val_loss": 2.2}, cfg)
    assert not worse.passed and "pass@1 0.0800 < production 0.1000" in worse.reason and "val_loss 2.2000" in worse.reason
    assert client.get_model_version(NAME, "2").tags["gate"].startswith("failed: pass@1")
    assert str(client.get_model_version_by_alias(NAME, "staff").version) == "1"  # nothing moved

    within = decide(registry, "3", {"pass@1": 0.10, "val_loss": 2.04}, cfg)  # loss within tolerance
    assert within.passed and within.production == {"pass@1": 0.10, "val_loss": 2.0}
    assert str(client.get_model_version_by_alias(NAME, "staff").version) == "3"
    assert str(client.get_model_version_by_alias(NAME, "production").version) == "1"


def test_production_measured_on_the_candidates_split_replaces_its_old_figures(registry: ModelRegistry) -> None:
    cfg = GateConfig(min_pass_at_1_gain=0.0, max_val_loss_increase=0.0)
    decide(registry, "1", {"pass@1": 0.0, "val_loss": 2.0}, cfg)  # measured on the old data
    registry.promote()
    # New data is harder: the candidate's 2.5 is worse than production's old 2.0 ...
    assert not decide(registry, "2", {"pass@1": 0.0, "val_loss": 2.5}, cfg).passed
    # ... but production scores 2.7 on the same new split, so the candidate is the better model.
    here = decide(registry, "3", {"pass@1": 0.0, "val_loss": 2.5}, cfg, production_here={"val_loss": 2.7})
    assert here.passed and here.production == {"pass@1": 0.0, "val_loss": 2.7}
    assert registry.figures("1")["val_loss"] == 2.0  # production's recorded figures are left as they were


def test_a_candidate_that_forgot_the_earlier_code_fails(registry: ModelRegistry) -> None:
    cfg = GateConfig(min_pass_at_1_gain=0.0, max_val_loss_increase=0.0, max_replay_val_loss_increase=0.05)
    decide(registry, "1", {"pass@1": 0.0, "val_loss": 2.0}, cfg)
    registry.promote()
    production = {"val_loss": 2.7, "replay_val_loss": 2.0}  # production on the new split and on the earlier one
    forgot = decide(registry, "2", {"pass@1": 0.0, "val_loss": 2.4, "replay_val_loss": 2.3}, cfg, production_here=production)
    assert not forgot.passed and forgot.reason == "replay_val_loss 2.3000 > production 2.0000 + 0.05 (it forgot the earlier code)"
    kept = decide(registry, "3", {"pass@1": 0.0, "val_loss": 2.4, "replay_val_loss": 2.04}, cfg, production_here=production)
    assert kept.passed  # better on the new code, within the allowance on the old
    # a model trained from scratch on a new vocabulary has no earlier data to be compared on
    assert decide(registry, "4", {"pass@1": 0.0, "val_loss": 1.9}, cfg).passed


def test_no_language_may_regress_beyond_the_threshold(registry: ModelRegistry) -> None:
    cfg = GateConfig(max_language_regression=0.05)
    decide(registry, "1", {"pass@1": 0.30, "humaneval-js/pass@1": 0.20, "humaneval-rust/pass@1": 0.10}, cfg)
    assert registry.promote() == "1"
    # better on Python, within the threshold on JavaScript, 0.08 worse on Rust: refused, naming the language
    regressed = decide(registry, "2", {"pass@1": 0.35, "humaneval-js/pass@1": 0.16, "humaneval-rust/pass@1": 0.02}, cfg)
    assert not regressed.passed and "humaneval-rust/pass@1 0.0200 < production 0.1000 - 0.05" in regressed.reason
    assert "humaneval-js" not in regressed.reason
    # a language production was never scored on does not gate; without the threshold only the headline does
    assert decide(registry, "3", {"pass@1": 0.35, "humaneval-js/pass@1": 0.16, "humaneval-java/pass@1": 0.0}, cfg).passed
    assert decide(registry, "4", {"pass@1": 0.35, "humaneval-rust/pass@1": 0.0}, GateConfig()).passed


def test_promote_without_staff_is_one_clear_error(registry: ModelRegistry) -> None:
    with pytest.raises(LatheError, match="no version of lathe-code holds the `staff` alias"):
        registry.promote()


def test_completions_are_cut_at_the_first_stop_sequence() -> None:
    stops = ["\ndef", "\nclass", "\nif", "\nprint", "\n#"]
    assert truncate("    return x\n\ndef other():\n    pass", stops) == "    return x\n"
    assert truncate("    return x\nprint(f(1))\n# done", stops) == "    return x"
    assert truncate("    if x:\n        return 1\n    return 2", stops) == "    if x:\n        return 1\n    return 2"


def test_an_alias_pointing_at_a_missing_version_is_an_error_not_none(
    client: MlflowClient, registry: ModelRegistry, tmp_path: Path
) -> None:
    import sqlite3

    registry.set_alias("production", "1")
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # the registry loses the version's entry
        db.execute("UPDATE registered_model_aliases SET version = 99 WHERE alias = 'production'")
    assert registry.aliases()["production"] == "99" and registry.dangling() == {"production": "99"}
    cfg = GateConfig()
    with pytest.raises(LatheError, match=r"the `production` alias of lathe-code points at version 99, which does not exist"):
        decide(registry, "2", {"pass@1": 0.5, "val_loss": 1.0}, cfg)
    with pytest.raises(LatheError, match="points at version 99"):
        registry.version_of("production")
    assert registry.find("staff") is None  # an alias nobody set is still simply absent


def test_a_loss_production_was_never_measured_on_is_left_out(registry) -> None:
    cfg = GateConfig(min_pass_at_1_gain=0.0, max_val_loss_increase=0.0)
    decide(registry, "1", {"pass@1": 0.0, "val_loss": 2.0}, cfg)
    registry.set_alias("production", "1")
    # a tuned model's held-out loss (on pairs, not on production's split) would fail it on an unrelated number
    assert not decide(registry, "2", {"pass@1": 0.0, "val_loss": 5.5}, cfg).passed
    left_out = decide(registry, "3", {"pass@1": 0.0}, cfg, compare_loss=False)
    assert left_out.passed and "val_loss" not in registry.figures("3")
    assert not decide(registry, "4", {"pass@1": -0.1}, cfg, compare_loss=False).passed  # pass@k still decides


def test_paired_interval_matches_a_hand_computed_case_and_is_seeded() -> None:
    # every item one point better: each resample's difference is exactly +1 (no noise at all)
    same = Paired([2.0, 3.0, 4.0], [1.0, 2.0, 3.0], higher_is_better=True)
    assert paired_interval(same, 0.95, 500) == (1.0, 1.0)
    # weighted: bits per byte, (bits_c - bits_p) / bytes, each document 2 bits worse per 100 bytes
    bpb = Paired([12.0, 22.0], [10.0, 20.0], higher_is_better=False, weights=[100.0, 100.0])
    assert bpb.figures() == (0.17, 0.15) and paired_interval(bpb, 0.95, 500) == pytest.approx((0.02, 0.02))
    noisy = Paired([1.0, 0.0] * 20, [0.0, 1.0] * 20, higher_is_better=True)
    assert paired_interval(noisy, 0.9, 400) == paired_interval(noisy, 0.9, 400)  # the same verdict every time
    low, high = paired_interval(noisy, 0.9, 400)
    assert low < 0 < high  # a tie: as many tasks won as lost


def test_the_gate_refuses_a_worse_infiller_beyond_noise_and_passes_one_within_it(registry: ModelRegistry) -> None:
    cfg = GateConfig(max_infill_pass_drop=0.01)
    decide(registry, "1", {"pass@1": 0.0}, cfg)
    registry.promote()
    rng = np.random.default_rng(7)
    production = (rng.random(400) < 0.30).astype(float)  # passes 30% of 400 tasks
    # within noise: the same tasks, a handful flipped each way
    flips = rng.choice(400, size=12, replace=False)
    tied = production.copy()
    tied[flips] = 1 - tied[flips]
    within = decide(registry, "2", {"pass@1": 0.0}, cfg, paired={"infill_pass@1": Paired(tied, production, True, 0.01)})
    assert within.passed, within.reason
    # worse beyond the margin: half of production's passes lost
    worse_tasks = production.copy()
    worse_tasks[np.flatnonzero(production)[::2]] = 0.0
    worse = decide(registry, "3", {"pass@1": 0.0}, cfg, paired={"infill_pass@1": Paired(worse_tasks, production, True, 0.01)})
    assert not worse.passed
    assert worse.reason.startswith(f"infill_pass@1 {worse_tasks.mean():.4f} < production {production.mean():.4f} beyond noise")
    # bits per byte: lower is better; a candidate worse on every document is refused
    docs = rng.integers(200, 2000, size=50).astype(float)
    prod_bits = docs * 1.5
    refused = decide(
        registry,
        "4",
        {"pass@1": 0.0},
        cfg,
        paired={"bits_per_byte": Paired(prod_bits * 1.1, prod_bits, False, 0.0, weights=docs)},
    )
    assert not refused.passed and refused.reason.startswith("bits_per_byte 1.6500 > production 1.5000 beyond noise")


def test_infilling_pass_at_1_is_gated_with_noise_not_as_a_language(registry: ModelRegistry) -> None:
    cfg = GateConfig(max_language_regression=0.0)
    assert decide(registry, "1", {"pass@1": 0.1, "humaneval-js/pass@1": 0.2, "infill/psm/pass@1": 0.5}, cfg).passed
    registry.promote()
    # a lower recorded infill/psm/pass@1 alone does not fail it: only the paired comparison on the same tasks may
    ours = decide(registry, "2", {"pass@1": 0.1, "humaneval-js/pass@1": 0.2, "infill/psm/pass@1": 0.3}, cfg)
    assert ours.passed, ours.reason
    worse = decide(registry, "3", {"pass@1": 0.1, "humaneval-js/pass@1": 0.1, "infill/psm/pass@1": 0.3}, cfg)
    assert not worse.passed and "humaneval-js/pass@1" in worse.reason and "infill" not in worse.reason
