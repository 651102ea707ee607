"""Config loading: profiles, --set overrides, and one-line errors naming the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from lathe.core.errors import ConfigError
from lathe.pipelines.config import load_config
from tests.conftest import REPO

TINY = REPO / "configs" / "tiny.yaml"


def test_tiny_profile_loads_with_typed_values() -> None:
    cfg = load_config(TINY)
    assert cfg.profile == "tiny"
    assert cfg.data.sources[0].kind == "embedded"
    assert cfg.data.dedup.threshold == 0.7
    assert cfg.data.quality.overrides["json"].max_line_length == 5000


def test_overrides_parse_yaml_scalars_lists_and_indexes() -> None:
    cfg = load_config(
        TINY,
        [
            "data.dedup.threshold=0.8",
            "data.dedup.near=false",
            "data.parse.languages=[python, go]",
            "data.sources.0.max_bytes=1000",
        ],
    )
    assert cfg.data.dedup.threshold == 0.8
    assert cfg.data.dedup.near is False
    assert cfg.data.parse.languages == ["python", "go"]
    assert cfg.data.sources[0].max_bytes == 1000


def test_unknown_key_is_rejected_with_its_path() -> None:
    with pytest.raises(ConfigError, match=r"unknown key data\.dedup\.thresold"):
        load_config(TINY, ["data.dedup.thresold=0.8"])


def test_unknown_key_in_yaml_file_names_file_and_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: x\ndata:\n  quality:\n    max_line_lenght: 10\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown key data\.quality\.max_line_lenght"):
        load_config(bad)


def test_bad_values_and_unknown_source_kind_are_named() -> None:
    with pytest.raises(ConfigError, match=r"data\.dedup\.threshold"):
        load_config(TINY, ["data.dedup.threshold=1.5"])
    with pytest.raises(ConfigError, match=r"'s3'.*tree.*embedded.*parquet.*stack"):
        load_config(TINY, ["data.sources.0.kind=s3"])


def test_bad_override_syntax_and_missing_file() -> None:
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(TINY, ["data.dedup.threshold"])
    with pytest.raises(ConfigError, match="index"):
        load_config(TINY, ["data.sources.5.max_bytes=1"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(REPO / "configs" / "nope.yaml")


def test_defaults_without_a_file() -> None:
    cfg = load_config(None, ["data.max_file_bytes=10"])
    assert cfg.profile == "adhoc" and cfg.data.max_file_bytes == 10


@pytest.mark.parametrize(
    "name, low, high", [("125m", 100e6, 160e6), ("350m", 300e6, 400e6), ("1b", 0.9e9, 1.3e9), ("3b", 2.4e9, 3.3e9)]
)
def test_gpu_profiles_validate_and_have_their_size(name: str, low: float, high: float) -> None:
    import re

    import torch
    from transformers import LlamaForCausalLM

    from lathe.training.model import llama_config, parameter_count

    path = REPO / "configs" / f"gpu-{name}.yaml"
    cfg = load_config(path)
    assert cfg.train.precision == "amp_bf16" and cfg.shards.seq_len == 2048
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(cfg.train.model, cfg.tokenizer.vocab_size, 0, 1))
    params = parameter_count(model)
    assert low < params < high
    stated = re.search(r"= ([\d.]+)([MB])\.", path.read_text()).groups()  # the comment's arithmetic
    assert abs(float(stated[0]) * (1e6 if stated[1] == "M" else 1e9) - params) / params < 0.01


def test_checks_across_sections_run_when_the_config_loads() -> None:
    with pytest.raises(ConfigError, match=r"shards.seq_len=100000 exceeds train.model.max_seq_len=512"):
        load_config(TINY, ["shards.seq_len=100000"])
    with pytest.raises(
        ConfigError, match=r"vocab_size=256 leaves no room for merges: .* 400 reserved sentinels already take 664"
    ):
        load_config(TINY, ["tokenizer.vocab_size=256", "tokenizer.reserved_sentinels=400"])
    assert load_config(TINY, ["shards.seq_len=512"]).shards.seq_len == 512  # equal is fine


def test_the_cpu_profile_trains_python_on_short_fim_examples() -> None:
    """configs/cpu.yaml: its choices hold together (benchmarks/README.md, "The CPU profile", measures them)."""
    cfg = load_config(REPO / "configs" / "cpu.yaml")
    assert cfg.data.languages == ["python"]
    # several whole FIM examples, each with its middle's end, in one training sample
    assert cfg.shards.fim_context is not None and 2 * cfg.shards.fim_context <= cfg.shards.seq_len
    assert cfg.shards.fim_rate >= 0.5 and cfg.shards.fim_line_rate >= 0.5
    assert cfg.train.time_budget_s is not None and cfg.train.time_budget_s <= 1800
    assert cfg.train.init_from is None and cfg.train.registered_model != load_config(TINY).train.registered_model
