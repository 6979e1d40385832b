"""Per-sample attack losses on logits, each to be *maximised* by the attacker.

All are written without one-hot masking of the logits: ``max((1 − onehot)·z)``
returns 0 instead of the largest other logit when every logit is negative (a
known peer defect, docs/references.md); the true class is removed with −∞ instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _other_logits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logits with the true class set to −∞."""
    return logits.scatter(1, y[:, None], float("-inf"))


def largest_other_logit(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j ≠ y} z_j per sample, correct for any sign of the logits."""
    return _other_logits(logits, y).amax(1)


def _need_classes(logits: torch.Tensor, k: int, what: str) -> None:
    if logits.shape[1] < k:
        raise ValueError(
            f"the {what} loss needs at least {k} classes, the model has {logits.shape[1]}; "
            "use the CE or CW loss instead"
        )


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini–Wagner margin max_{j≠y} z_j − z_y: positive exactly when misclassified."""
    return largest_other_logit(logits, y) - logits.gather(1, y[:, None]).squeeze(1)


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020, eq. 6), to maximise.

    −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3), π the logits sorted descending;
    invariant to shifting and scaling the logits.
    """
    _need_classes(logits, 3, "DLR")
    top = logits.topk(3, dim=1).values
    return cw_margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR (Croce & Hein 2020, eq. 7): −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)."""
    _need_classes(logits, 4, "targeted DLR")
    top = logits.topk(4, dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "cw": cw_margin, "dlr": dlr}


def get_loss(name: str) -> LossFn:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown attack loss '{name}'; choose one of: {', '.join(LOSSES)}"
        ) from None
