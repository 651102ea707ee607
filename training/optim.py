"""Optimizers: Composer's DecoupledAdamW, and a decoupled Lion (Chen et al., 2023) as Replit used."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from composer.optim import DecoupledAdamW

from lathe.training.config import OptimizerConfig


class DecoupledLionW(torch.optim.Optimizer):
    """Lion with weight decay decoupled from the learning rate's schedule fraction.

    update = sign(beta1 * m + (1 - beta1) * g); m <- beta2 * m + (1 - beta2) * g;
    p <- p * (1 - wd * lr / initial_lr) - lr * update.
    """

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        if lr <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid Lion hyper-parameters lr={lr} betas={betas}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, initial_lr=lr))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avg = state["exp_avg"]
                if wd:
                    p.mul_(1 - wd * lr / group["initial_lr"])
                update = exp_avg.mul(beta1).add_(p.grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-lr)
                exp_avg.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


def build_optimizer(params: Iterable, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The configured optimizer."""
    if cfg.name == "decoupled_lionw":
        return DecoupledLionW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return DecoupledAdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
