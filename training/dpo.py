"""Direct Preference Optimization: the loss and the log-probabilities it is computed from.

DPO (Rafailov et al., 2023) trains a policy on (prompt, chosen, rejected) triples without a
reward model: with ``r(y) = beta * (log pi(y|x) - log pi_ref(y|x))`` the implicit reward of a
completion, the loss is ``-log sigmoid(r(chosen) - r(rejected))``. Label smoothing ``eps``
(the "conservative" DPO of Mitchell, 2023) treats each label as flipped with probability
``eps``: ``-(1 - eps) log sigmoid(m) - eps log sigmoid(-m)`` for the margin ``m``.

The reference model's log-probabilities are computed once, before training, and stored
beside the pairs, so training holds one model in memory. Only completion tokens count:
positions whose label is -100 (the prompt, padding) add nothing to a sequence's log-probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lathe.training.sft_data import IGNORE_INDEX


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sequence, the sum of log-probabilities of its labelled tokens (``labels != -100``).

    ``logits``: (batch, seq, vocab) for inputs whose targets are ``labels`` (batch, seq),
    already aligned as a causal model's outputs are: position ``t`` predicts ``labels[t + 1]``.
    """
    targets = labels[:, 1:]
    scores = logits[:, :-1].float().log_softmax(dim=-1)
    mask = targets != IGNORE_INDEX
    picked = scores.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(dim=-1)


@dataclass(frozen=True)
class DPOOutput:
    """The batch's mean loss, and what to log: rewards, their margin and the share ordered right."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor  # per pair: beta * (policy - reference) log-probability of chosen
    rejected_rewards: torch.Tensor
    margin: torch.Tensor  # mean of chosen - rejected rewards
    accuracy: torch.Tensor  # share of pairs whose chosen reward exceeds the rejected one


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> DPOOutput:
    """The DPO loss over a batch of pairs, from per-sequence log-probabilities (:func:`sequence_logps`)."""
    if beta <= 0:
        raise ValueError(f"DPO beta must be positive (got {beta}); 0.1 is the usual choice")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"DPO label smoothing must be in [0, 0.5) (got {label_smoothing}); 0 is plain DPO")
    chosen = beta * (policy_chosen - reference_chosen)
    rejected = beta * (policy_rejected - reference_rejected)
    margins = chosen - rejected
    losses = -(1 - label_smoothing) * F.logsigmoid(margins) - label_smoothing * F.logsigmoid(-margins)
    return DPOOutput(
        loss=losses.mean(),
        chosen_rewards=chosen.detach(),
        rejected_rewards=rejected.detach(),
        margin=margins.detach().mean(),
        accuracy=(margins.detach() > 0).float().mean(),
    )
