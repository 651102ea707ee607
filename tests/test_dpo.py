"""DPO: the loss against values computed by hand, and masked sequence log-probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from lathe.training.posttrain.dpo import dpo_loss, sequence_logps
from lathe.training.posttrain.sft_data import IGNORE_INDEX as IGNORE


def test_dpo_loss_matches_a_hand_computed_value() -> None:
    # Pair 1: policy moved 2 nats towards chosen and 1 away from rejected; beta 0.1 -> margin 0.3.
    # Pair 2: the policy prefers the rejected one: margin 0.1 * ((-5 + 4) - (-2 + 3)) = -0.2.
    out = dpo_loss(
        policy_chosen=torch.tensor([-8.0, -5.0]),
        policy_rejected=torch.tensor([-11.0, -2.0]),
        reference_chosen=torch.tensor([-10.0, -4.0]),
        reference_rejected=torch.tensor([-10.0, -3.0]),
        beta=0.1,
    )
    expected = (math.log1p(math.exp(-0.3)) + math.log1p(math.exp(0.2))) / 2  # -log sigmoid(m) = log(1 + e^-m)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.2, -0.1])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.1, 0.1])
    assert out.margin.item() == pytest.approx(0.05)
    assert out.accuracy.item() == 0.5


def test_label_smoothing_mixes_in_the_flipped_label() -> None:
    args = [torch.tensor([-8.0]), torch.tensor([-11.0]), torch.tensor([-10.0]), torch.tensor([-10.0])]
    out = dpo_loss(*args, beta=0.1, label_smoothing=0.2)
    m = 0.3
    assert out.loss.item() == pytest.approx(0.8 * math.log1p(math.exp(-m)) + 0.2 * math.log1p(math.exp(m)), abs=1e-6)
    with pytest.raises(ValueError, match="label smoothing"):
        dpo_loss(*args, beta=0.1, label_smoothing=0.5)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(*args, beta=0.0)


def test_the_loss_pushes_the_policy_towards_the_chosen_completion() -> None:
    policy_chosen = torch.tensor([-6.0], requires_grad=True)
    policy_rejected = torch.tensor([-6.0], requires_grad=True)
    dpo_loss(policy_chosen, policy_rejected, torch.tensor([-6.0]), torch.tensor([-6.0]), beta=0.5).loss.backward()
    assert policy_chosen.grad.item() < 0 < policy_rejected.grad.item()  # descent raises chosen, lowers rejected


def test_sequence_logps_count_only_labelled_tokens() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 1, IGNORE], [IGNORE, 6, 0, 2, 5]])
    got = sequence_logps(logits, labels)
    scores = logits.log_softmax(-1)
    # Position t predicts labels[t + 1]: row 0 scores tokens 3 and 1 at positions 1 and 2.
    assert got[0].item() == pytest.approx((scores[0, 1, 3] + scores[0, 2, 1]).item(), abs=1e-6)
    assert got[1].item() == pytest.approx(sum(scores[1, t, labels[1, t + 1]].item() for t in range(4)), abs=1e-6)


def test_dpo_model_trains_with_composer_towards_the_chosen_completions() -> None:
    from composer import Trainer
    from torch.utils.data import DataLoader
    from transformers import LlamaConfig, LlamaForCausalLM

    from lathe.training.posttrain.dpo import DPOModel, collate_preferences, encode_preference, reference_logps

    torch.manual_seed(0)
    policy = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
        )
    )
    rng = torch.Generator().manual_seed(1)
    pairs = []
    for _ in range(8):
        prompt, chosen, rejected = (torch.randint(2, 49, (n,), generator=rng).tolist() for n in (5, 4, 6))
        pairs.append(encode_preference(prompt, chosen, rejected, eos_id=1, max_len=16))
    assert encode_preference([2] * 10, [3] * 6, [4], eos_id=1, max_len=16) is None  # one side too long: the pair goes
    reference_logps(policy, pairs, pad_id=0)
    collate = collate_preferences(pad_id=0)
    model = DPOModel(policy, beta=0.5)
    batch = collate(pairs)
    with torch.no_grad():
        start = model._dpo(model(batch), batch)
    assert start.loss.item() == pytest.approx(math.log(2), abs=1e-5)  # policy == reference: every margin is 0

    loader = DataLoader(pairs, batch_size=4, shuffle=False, collate_fn=collate)
    trainer = Trainer(
        model=model,
        train_dataloader=loader,
        max_duration="12ba",
        device="cpu",
        progress_bar=False,
        optimizers=torch.optim.Adam(model.parameters(), lr=3e-3),
        log_to_console=False,
        seed=0,
    )
    trainer.fit()
    model.eval()
    with torch.no_grad():
        end = model._dpo(model(batch), batch)
    assert end.loss.item() < start.loss.item() - 0.1
    assert end.accuracy.item() == 1.0 and end.margin.item() > 0
    # The same figures reach Composer's loggers through the model's metrics (the last training batch).
    assert trainer.state.train_metrics["PreferenceAccuracy"].compute().item() == 1.0
    assert trainer.state.train_metrics["RewardMargin"].compute().item() > 0


def test_rpo_adds_the_chosen_answers_cross_entropy_and_the_metric_reports_it() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from lathe.training.posttrain.dpo import ChosenCrossEntropy, DPOModel, collate_preferences, encode_preference, reference_logps

    torch.manual_seed(0)
    policy = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
        )
    )
    pairs = [
        encode_preference([5, 6, 7], [8, 9], [10, 11, 12], eos_id=1, max_len=16),
        encode_preference([5, 6], [13, 14, 15, 16], [17], eos_id=1, max_len=16),
    ]
    reference_logps(policy, pairs, pad_id=0)
    batch = collate_preferences(pad_id=0)(pairs)
    plain, rpo = DPOModel(policy, beta=0.5), DPOModel(policy, beta=0.5, sft_weight=2.0)
    with torch.no_grad():
        outputs = plain(batch)
        chosen_logp = outputs[0]
        tokens = 3 + 5  # each chosen answer and its EOS
        assert rpo.loss(outputs, batch).item() == pytest.approx(
            plain.loss(outputs, batch).item() - 2.0 * chosen_logp.sum().item() / tokens
        )
        metric = ChosenCrossEntropy()
        plain.update_metric(batch, outputs, metric)
        assert metric.compute().item() == pytest.approx(-chosen_logp.sum().item() / tokens)
