"""The model: a Hugging Face Llama built from config (no download), wrapped for Composer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from composer.metrics.nlp import LanguageCrossEntropy, LanguagePerplexity
from composer.models import HuggingFaceModel
from transformers import LlamaConfig, LlamaForCausalLM

from lathe.training.config import ModelConfig

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PretrainedConfig, PreTrainedModel


def ffn_hidden(cfg: ModelConfig) -> int:
    """SwiGLU hidden size: 8/3 of d_model (same parameters as a 4x GELU MLP), rounded up to 64."""
    return cfg.ffn_hidden or -(-int(8 * cfg.d_model / 3) // 64) * 64


def llama_config(cfg: ModelConfig, vocab_size: int, eos_id: int, pad_id: int) -> LlamaConfig:
    """The transformers config: a standard checkpoint vLLM, TensorRT-LLM and ONNX export load."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=ffn_hidden(cfg),
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads or cfg.n_heads,
        max_position_embeddings=cfg.max_seq_len,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        rms_norm_eps=1e-5,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        attn_implementation="sdpa",
        use_cache=True,
    )


def flops_per_token(cfg: PretrainedConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (non-embedding params + LM head) + attention (PaLM appendix B), from
    a Llama-shaped config (a :class:`LlamaConfig`, or the config of a model loaded from lathe's checkpoints)."""
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * cfg.intermediate_size  # q, o, k, v, gate/up/down
    dense = layers * per_layer + d * cfg.vocab_size  # the LM head's matmul counts even when tied
    return 6.0 * dense + 12.0 * layers * d * seq_len


class CodeLM(HuggingFaceModel):
    """Composer wrapper: cross-entropy / perplexity metrics and FLOPs for MFU."""

    def __init__(self, model: PreTrainedModel | PeftModel, seq_len: int) -> None:
        super().__init__(
            model,
            use_logits=True,
            shift_labels=True,
            metrics=[LanguageCrossEntropy(), LanguagePerplexity()],
            eval_metrics=[LanguageCrossEntropy(), LanguagePerplexity()],
        )
        self._flops_per_token = flops_per_token(model.config, seq_len)

    def flops_per_batch(self, batch: Mapping[str, Any]) -> float:
        """Used by Composer's SpeedMonitor for FLOP/s and MFU."""
        return self._flops_per_token * batch["input_ids"].numel()


def build_model(cfg: ModelConfig, vocab_size: int, eos_id: int, pad_id: int, seq_len: int) -> CodeLM:
    """A freshly initialised model of the configured shape."""
    model = LlamaForCausalLM(llama_config(cfg, vocab_size, eos_id, pad_id))
    return CodeLM(model, seq_len)


def parameter_count(model: torch.nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
