"""Natural training: cross-entropy on the clean batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Stats, correct, register_defense, to_stats


class NaturalTraining:
    """Mean cross-entropy of the clean batch (both papers' "natural" rows)."""

    name = "natural"

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, Stats]:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return loss, to_stats({"loss": loss, "train_correct": correct(logits, y)})

    def __repr__(self) -> str:
        return "NaturalTraining()"


@register_defense("natural", summary="cross-entropy on clean inputs")
def natural() -> NaturalTraining:
    return NaturalTraining()
