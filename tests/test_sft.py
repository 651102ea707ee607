"""Supervised fine-tuning with Composer on SFT MDS examples: full and LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from composer import Trainer
from transformers import LlamaConfig, LlamaForCausalLM

from lathe.training.config import LoraConfig
from lathe.training.posttrain.lora import merged, trainable_share
from lathe.training.posttrain.sft import sft_dataloader, sft_model
from lathe.training.posttrain.sft_data import encode_pairs, write_examples

pytestmark = pytest.mark.integration  # fine-tunes a model

PAD, EOS = 0, 1


def letters(texts: list[str]) -> list[list[int]]:
    """A character tokenizer: 'a'..'z' and ' ' -> 2..28."""
    return [[2 + (ord(c) - 97 if c != " " else 26) for c in text] for text in texts]


@pytest.fixture(scope="module")
def sft_split(tmp_path_factory) -> str:
    rows = [{"prompt": f"say {w} ", "response": f"{w} {w}"} for w in ("cat", "dog", "sun", "sea", "sky", "ant", "owl", "elk")]
    examples, drops = encode_pairs(rows, letters, EOS, max_len=32)
    out = tmp_path_factory.mktemp("sft") / "train"
    assert drops == {} and write_examples(examples, str(out)) == 8
    return str(out)


def response_loss(model: torch.nn.Module, split: str, cache: Path) -> float:
    batch = next(iter(sft_dataloader(split, cache, batch_size=8, pad_id=PAD, shuffle=False, seed=0).dataloader))
    with torch.no_grad():
        return model(**batch).loss.item()


# LoRA learns less in the same steps: its updates are low-rank, start from zero, and leave the
# (tied) embeddings frozen: 3.47 -> 3.03 here in 30 batches, where full fine-tuning drops by more than 0.5.
@pytest.mark.parametrize(
    ("lora", "min_drop"), [(None, 0.5), (LoraConfig(rank=8, alpha=16, dropout=0.0), 0.3)], ids=["full", "lora"]
)
def test_fine_tuning_lowers_the_response_loss(sft_split: str, tmp_path: Path, lora: LoraConfig | None, min_drop: float) -> None:
    torch.manual_seed(0)
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
            pad_token_id=PAD,
        )
    )
    before = response_loss(base, sft_split, tmp_path / "c0")
    model = sft_model(base, seq_len=32, lora=lora)
    share = trainable_share(model)
    assert share == 1.0 if lora is None else 0 < share < 0.5  # a tiny model: adapters are a large share of it
    spec = sft_dataloader(sft_split, tmp_path / "c1", batch_size=4, pad_id=PAD, shuffle=True, seed=0)
    trainer = Trainer(
        model=model,
        train_dataloader=spec,
        max_duration="30ba",
        device="cpu",
        progress_bar=False,
        log_to_console=False,
        optimizers=torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2),
        seed=0,
    )
    trainer.fit()
    tuned = model.model if lora is None else merged(model.model)
    tuned.eval()
    after = response_loss(tuned, sft_split, tmp_path / "c2")
    assert after < before - min_drop, (before, after)
