"""Direct Preference Optimization: the loss and the log-probabilities it is computed from.

DPO (Rafailov et al., 2023) trains a policy on (prompt, chosen, rejected) triples without a
reward model: with ``r(y) = beta * (log pi(y|x) - log pi_ref(y|x))`` the implicit reward of a
completion, the loss is ``-log sigmoid(r(chosen) - r(rejected))``. Label smoothing ``eps``
(the "conservative" DPO of Mitchell, 2023) treats each label as flipped with probability
``eps``: ``-(1 - eps) log sigmoid(m) - eps log sigmoid(-m)`` for the margin ``m``.

The reference model's log-probabilities are computed once, before training
(:func:`reference_logps`), and stored beside the pairs, so training holds one model in
memory. Only completion tokens count: positions whose label is -100 (the prompt, padding)
add nothing to a sequence's log-probability. :class:`DPOModel` is the Composer model, so
DPO shares the trainer, loaders, checkpoints, autoresume, logging and FSDP of pretraining.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from composer.models import ComposerModel
from torchmetrics import MeanMetric, Metric
from transformers import PreTrainedModel

from lathe.training.posttrain.sft_data import IGNORE_INDEX, encode_pair, pad_batch

if TYPE_CHECKING:
    from peft import PeftModel

SIDES = ("chosen", "rejected")


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


def encode_preference(
    prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int], eos_id: int, max_len: int
) -> dict[str, list[int]] | None:
    """One pair's two sequences (prompt + completion + EOS, labels on the completion only), or None
    when either is longer than ``max_len`` (dropped as ``too_long`` by the caller)."""
    chosen = encode_pair(prompt_ids, chosen_ids, eos_id, max_len)
    rejected = encode_pair(prompt_ids, rejected_ids, eos_id, max_len)
    if chosen is None or rejected is None:
        return None
    return {
        "chosen_input_ids": chosen[0],
        "chosen_labels": chosen[1],
        "rejected_input_ids": rejected[0],
        "rejected_labels": rejected[1],
    }


def collate_preferences(pad_id: int) -> Callable[[Sequence[Mapping[str, Any]]], dict[str, torch.Tensor]]:
    """Encoded pairs -> a batch: both sides right-padded to the batch's longest sequence (``pad_id``,
    labels -100, attention 0), and the stored reference log-probabilities when the pairs have them."""

    def fn(samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(s[f"{side}_input_ids"]) for s in samples for side in SIDES)
        batch: dict[str, torch.Tensor] = {}
        for side in SIDES:
            padded = pad_batch([s[f"{side}_input_ids"] for s in samples], [s[f"{side}_labels"] for s in samples], pad_id, longest)
            batch |= {f"{side}_{name}": tensor for name, tensor in padded.items()}
            if f"reference_{side}" in samples[0]:
                batch[f"reference_{side}"] = torch.tensor([float(s[f"reference_{side}"]) for s in samples])
        return batch

    return fn


def _both_sides(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) sequence log-probabilities under ``model``, from one forward pass over both sides."""
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    attention = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
    labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])
    logps = sequence_logps(model(input_ids=ids, attention_mask=attention).logits, labels)
    chosen, rejected = logps.chunk(2)
    return chosen, rejected


@torch.no_grad()
def reference_logps(model: PreTrainedModel, samples: list[dict[str, Any]], pad_id: int, batch_size: int = 8) -> None:
    """Add ``reference_chosen`` and ``reference_rejected`` to each encoded pair: the log-probabilities
    of its two completions under ``model`` (the policy's starting point), computed once."""
    was_training = model.training
    model.eval()
    collate = collate_preferences(pad_id)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        chosen, rejected = _both_sides(model, collate(chunk))
        for sample, c, r in zip(chunk, chosen.tolist(), rejected.tolist()):
            sample["reference_chosen"], sample["reference_rejected"] = c, r
    model.train(was_training)


# MDS columns of encoded pairs with their reference log-probabilities (written by write_preferences).
PREFERENCE_COLUMNS = {
    **{f"{side}_{name}": "ndarray:int32" for side in SIDES for name in ("input_ids", "labels")},
    "reference_chosen": "float64",
    "reference_rejected": "float64",
}


def write_preferences(samples: Iterable[Mapping[str, Any]], out: str, compression: str | None = "zstd") -> int:
    """Write encoded pairs (:func:`encode_preference` + :func:`reference_logps`) as MDS shards under ``out``;
    returns how many were written."""
    from streaming import MDSWriter

    count = 0
    with MDSWriter(out=out, columns=PREFERENCE_COLUMNS, compression=compression) as writer:
        for sample in samples:
            writer.write(
                {
                    k: np.asarray(sample[k], dtype=np.int32) if t.startswith("ndarray") else float(sample[k])
                    for k, t in PREFERENCE_COLUMNS.items()
                }
            )
            count += 1
    return count


class PreferenceAccuracy(MeanMetric):
    """Share of pairs whose chosen completion gets the higher implicit reward."""


class RewardMargin(MeanMetric):
    """Mean implicit reward of the chosen completion minus the rejected one's."""


def chosen_tokens(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per pair, the number of labelled (answer) tokens of the chosen side."""
    return (batch["chosen_labels"][:, 1:] != IGNORE_INDEX).sum(dim=-1)


class ChosenCrossEntropy(Metric):
    """Per-token cross-entropy of the chosen completions under the policy: the language-model loss the
    gate watches, so preference training cannot trade away the likelihood of good code unnoticed."""

    full_state_update = False
    nll: torch.Tensor  # the states add_state registers (nn.Module's __getattr__ types them Tensor | Module)
    tokens: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logps: torch.Tensor, tokens: torch.Tensor) -> None:
        """Add a batch: each chosen completion's log-probability and its number of labelled tokens."""
        self.nll += -logps.detach().double().sum()
        self.tokens += tokens.sum()

    def compute(self) -> torch.Tensor:
        """Mean negative log-likelihood per chosen token."""
        return self.nll / self.tokens.clamp(min=1)


class DPOModel(ComposerModel):
    """DPO as a Composer model: batches from :func:`collate_preferences` with stored reference
    log-probabilities; the loss of :func:`dpo_loss`; preference accuracy and reward margin as metrics."""

    def __init__(
        self, model: PreTrainedModel | PeftModel, beta: float, label_smoothing: float = 0.0, sft_weight: float = 0.0
    ) -> None:
        super().__init__()
        self.model, self.beta, self.label_smoothing, self.sft_weight = model, beta, label_smoothing, sft_weight
        self.train_metrics: dict[str, Metric] = {"PreferenceAccuracy": PreferenceAccuracy(), "RewardMargin": RewardMargin()}
        self.eval_metrics: dict[str, Metric] = {
            "PreferenceAccuracy": PreferenceAccuracy(),
            "RewardMargin": RewardMargin(),
            "ChosenCrossEntropy": ChosenCrossEntropy(),
        }

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) log-probabilities of the policy."""
        return _both_sides(self.model, batch)

    def _dpo(self, outputs: tuple[torch.Tensor, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> DPOOutput:
        return dpo_loss(*outputs, batch["reference_chosen"], batch["reference_rejected"], self.beta, self.label_smoothing)

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The batch's mean DPO loss, plus ``sft_weight`` times the chosen answers' per-token cross-entropy (RPO)."""
        loss = self._dpo(outputs, batch).loss
        if self.sft_weight:
            loss = loss + self.sft_weight * -outputs[0].sum() / chosen_tokens(batch).sum().clamp(min=1)
        return loss

    def eval_forward(self, batch: Mapping[str, torch.Tensor], outputs: Any | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's log-probabilities (reused from the training forward when given)."""
        return outputs if outputs is not None else self.forward(batch)

    def get_metrics(self, is_train: bool = False) -> dict[str, Metric]:
        """Preference accuracy and reward margin (train or eval copies)."""
        return self.train_metrics if is_train else self.eval_metrics

    def update_metric(self, batch: Mapping[str, torch.Tensor], outputs: Any, metric: Metric) -> None:
        """Feed each pair's outcome (ordered right, or its reward margin) to ``metric``."""
        if isinstance(metric, ChosenCrossEntropy):
            metric.update(outputs[0], chosen_tokens(batch))
            return
        out = self._dpo(outputs, batch)
        margins = out.chosen_rewards - out.rejected_rewards
        metric.update((margins > 0).float() if isinstance(metric, PreferenceAccuracy) else margins)
