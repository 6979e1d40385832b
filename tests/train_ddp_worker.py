"""A test-only defense, and the entry point the DDP test starts under torchrun.

``shifted_step`` does what TRADES, PGD-AT and LAD do to a model that a
trainer may have wrapped in DDP: an extra forward pass whose input gradient
(``torch.autograd.grad``) moves the batch, then a forward inside
``model.perturbed(...)`` with the model's own perturbation points. It draws
no random numbers, so one process and two must agree.

Run as ``python -m torch.distributed.run --nproc_per_node=2 -m
tests.train_ddp_worker train …``: it registers the defense, then runs the
``robustode`` command line.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from robustode.defenses import list_defenses, register_defense

NAME = "test_shifted_step"


class ShiftedStep:
    name = NAME

    def __init__(self, step: float = 0.05, shift: float = 0.01) -> None:
        self.step = step
        self.shift = shift

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        x0 = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x0), y), x0)
        # scaled per image (not sign()): a 1-process batch and its 2 halves give the same x_adv
        scale = grad.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        x_adv = (x + self.step * grad / scale).clamp(0, 1).detach()
        points = model.perturbation_points()
        with model.perturbed(lambda name, h: h + self.shift):
            logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        correct = (logits.detach().argmax(1) == y).sum().item()
        return loss, {"train_correct": float(correct), "points": float(len(points))}


if NAME not in list_defenses():

    @register_defense(NAME, summary="test only: a gradient step on x, then shifted activations")
    def shifted_step(*, step: float = 0.05, shift: float = 0.01) -> ShiftedStep:
        return ShiftedStep(step, shift)


if __name__ == "__main__":
    torch.set_num_threads(1)
    from robustode.cli import main

    sys.exit(main(sys.argv[1:]))
