"""LoRA adapters: only adapters train, the saved adapter reloads, the merged checkpoint equals the adapter's outputs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lathe.core.errors import ConfigError
from lathe.training.config import LoraConfig
from lathe.training.posttrain.lora import load_adapter, merged, save_adapter, trainable_share, with_adapters


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=97,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=32,
        )
    ).eval()


def test_lora_trains_only_adapters_and_merges_to_the_same_outputs(tmp_path: Path) -> None:
    base = tiny_llama()
    pristine = copy.deepcopy(base)
    model = with_adapters(base, LoraConfig(rank=4, alpha=8, dropout=0.0))
    assert 0 < trainable_share(model) < 0.15
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)

    # One optimizer step: the adapters move, the base weights do not.
    ids = torch.randint(0, 97, (2, 16))
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    model.eval()
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if not p.requires_grad)
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        assert not torch.allclose(adapted, pristine(input_ids=ids).logits, atol=1e-4)  # the adapter changes the outputs

    save_adapter(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    reloaded = load_adapter(copy.deepcopy(pristine), tmp_path / "adapter").eval()
    full = merged(model)
    assert type(full) is LlamaForCausalLM and not any("lora_" in name for name, _ in full.named_parameters())
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, adapted, atol=1e-5)
        assert torch.allclose(full(input_ids=ids).logits, adapted, atol=1e-5)


def test_unknown_target_modules_are_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="not linear layers.*q_proj"):
        with_adapters(tiny_llama(), LoraConfig(target_modules=["query_key_value"]))
