"""The papers' optimiser and learning-rate schedule: SGD with a piecewise-constant lr.

- SONet (§5.1 and its reference code, docs/references.md): SGD momentum 0.9, lr 0.01,
  ×0.1 after epochs 150 and 300 of 350, batch 100, no weight decay.
- LAD (§4): SGD momentum 0.9, weight decay 1e-4, lr 0.1, ÷10 after
  epochs 80 and 120 of 160 (CIFAR-10) or 150 and 225 of 300 (CIFAR-100).

Epochs are counted from 1. A milestone m means "after m epochs": epochs
1..m run at the lr before it, epoch m + 1 at the decayed lr — what PyTorch's
``MultiStepLR(milestones=[m, …])`` stepped once per epoch does. The lr is a
pure function of the epoch (``base_lr · factor^k``, k = milestones passed), so
a resumed run sets exactly the lr an uninterrupted one had.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from .config import TrainConfig


@dataclass(frozen=True)
class PiecewiseSchedule:
    """lr(epoch) = base_lr · factor^(number of milestones m with m < epoch)."""

    base_lr: float
    milestones: tuple[int, ...] = ()
    factor: float = 0.1

    @classmethod
    def from_config(cls, config: TrainConfig) -> PiecewiseSchedule:
        return cls(config.lr, tuple(config.milestones), config.lr_factor)

    def lr(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (1-based)."""
        if epoch < 1:
            raise InputError(f"epochs count from 1, got {epoch}")
        passed = sum(1 for m in self.milestones if m < epoch)
        return self.base_lr * self.factor**passed

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        """Set every parameter group's lr to that of ``epoch``; return it."""
        lr = self.lr(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "piecewise",
            "base_lr": self.base_lr,
            "milestones": list(self.milestones),
            "factor": self.factor,
        }

    def check_state(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint whose schedule is another one (a resume must not change it)."""
        if state != self.state_dict():
            raise InputError(
                f"the checkpoint's lr schedule {state} is not this run's {self.state_dict()}"
            )


def make_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig) -> torch.optim.SGD:
    """SGD as both papers train: momentum (optionally Nesterov) and L2 weight decay applied to
    every parameter, BatchNorm's included (SGD over ``model.parameters()``, as is usual)."""
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
