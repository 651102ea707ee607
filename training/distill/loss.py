"""Knowledge distillation on the pretraining stack: the student is a :class:`CodeLM` whose loss also pulls
its next-token distribution towards a frozen teacher's, computed on the same batch in the same process.

The teacher is not a submodule of the Composer model: the optimizer, FSDP and the checkpoints see
the student only (a resumed run reloads the teacher from its registered version). Validation reports
``DistillKL``: the plain (T = 1) KL from the teacher's distribution to the student's per predicted
token, the figure distillation must lower.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from transformers import PreTrainedModel

from lathe.training.model import CodeLM

if TYPE_CHECKING:
    from peft import PeftModel

TEACHER_LOGITS = "teacher_logits"  # where the teacher's logits ride along with an evaluation batch


def kl_per_token(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Summed KL(teacher_T || student_T) over the positions ``mask`` keeps (logits: batch x positions x vocab)."""
    s = F.log_softmax(student[mask].float() / temperature, -1)
    t = F.log_softmax(teacher[mask].float() / temperature, -1)
    return F.kl_div(s, t, log_target=True, reduction="sum")


def predicting(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose logits predict a real next token (HF's shift: position i predicts label i + 1)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    return mask


class DistillKL(Metric):
    """Mean KL(teacher || student) per predicted token, at temperature 1 (validation)."""

    full_state_update = False
    needs_batch = True  # Composer hands it the batch, which carries the teacher's logits
    total: torch.Tensor  # the states add_state registers (nn.Module's __getattr__ types them Tensor | Module)
    tokens: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, batch: Mapping[str, Any], outputs: torch.Tensor, labels: torch.Tensor) -> None:
        """``labels`` are already shifted by Composer (label i is the target of position i)."""
        mask = labels != -100
        teacher = batch[TEACHER_LOGITS]
        self.total += kl_per_token(outputs.to(teacher.device), teacher, mask.to(teacher.device)).to(self.total.device)
        self.tokens += mask.sum().to(self.tokens.device)

    def compute(self) -> torch.Tensor:
        return self.total / self.tokens.clamp(min=1)


class DistillLM(CodeLM):
    """A student trained on ``ce_weight`` x cross-entropy + ``kl_weight`` x T^2 x KL to ``teacher`` at ``temperature``."""

    def __init__(
        self,
        student: PreTrainedModel | PeftModel,
        teacher: torch.nn.Module,
        seq_len: int,
        temperature: float,
        kl_weight: float,
        ce_weight: float,
    ) -> None:
        super().__init__(student, seq_len)
        assert self.val_metrics is not None  # CodeLM passes eval_metrics, so Composer built the dict
        self.val_metrics["DistillKL"] = DistillKL()
        self._teacher = (teacher.eval().requires_grad_(False),)  # a tuple: kept out of the module tree (and the checkpoints)
        self.temperature, self.kl_weight, self.ce_weight = temperature, kl_weight, ce_weight
        self._teacher_logits: torch.Tensor | None = None

    @property
    def teacher(self) -> torch.nn.Module:
        """The frozen teacher, on the student's device."""
        teacher = self._teacher[0]
        device = next(self.model.parameters()).device
        if next(teacher.parameters()).device != device:
            self._teacher = (teacher.to(device),)
        return self._teacher[0]

    @torch.no_grad()
    def teacher_logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The teacher's logits for the batch's inputs (no gradient, never trained)."""
        return self.teacher(input_ids=batch["input_ids"]).logits

    def forward(self, batch: Mapping[str, Any]) -> Any:
        outputs = super().forward(batch)
        self._teacher_logits = self.teacher_logits(batch)
        return outputs

    def loss(self, outputs: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        mask = predicting(batch["labels"])
        assert self._teacher_logits is not None
        kl = kl_per_token(outputs["logits"], self._teacher_logits, mask, self.temperature) / mask.sum().clamp(min=1)
        return self.ce_weight * outputs["loss"] + self.kl_weight * self.temperature**2 * kl

    def eval_forward(self, batch: Any, outputs: Any | None = None) -> Any:
        logits = super().eval_forward(batch, outputs)  # without cached outputs this runs ``forward``: the teacher too
        batch[TEACHER_LOGITS] = self._teacher_logits
        return logits
