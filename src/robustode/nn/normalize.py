"""Input normalisation inside the model (the RobustBench convention).

Models take images in [0, 1]; a mean/std normalisation, when wanted, is the
model's first layer, so every attack and external evaluator works in pixel
space and the ε-ball is the true threat model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Per-channel training-set statistics of the official datasets.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

NormalizeSpec = str | dict | None


class Normalize(nn.Module):
    """(x − mean) / std per channel; the statistics are constants, not parameters."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not mean:
            raise ValueError(
                f"normalize needs mean and std of the same non-zero length, got {mean}, {std}"
            )
        numbers = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in (*mean, *std)
        )
        if not numbers or any(s <= 0 for s in std):
            raise ValueError(
                f"normalize needs numbers with std > 0, got mean {list(mean)}, std {list(std)}"
            )
        # Non-persistent: statistics come from the config, not from checkpoints.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def make_normalize(spec: NormalizeSpec, in_channels: int) -> nn.Module:
    """``None`` → identity; ``"cifar10"``/``"cifar100"``; or ``{"mean": [...], "std": [...]}``."""
    if spec is None:
        return nn.Identity()
    if isinstance(spec, str):
        if spec not in DATASET_STATS:
            raise ValueError(
                f"unknown normalize '{spec}'; choose None, one of {sorted(DATASET_STATS)}, "
                "or {'mean': [...], 'std': [...]}"
            )
        mean, std = DATASET_STATS[spec]
    elif isinstance(spec, dict) and set(spec) == {"mean", "std"}:
        mean, std = tuple(spec["mean"]), tuple(spec["std"])
    else:
        raise ValueError(
            f"normalize must be None, a dataset name or {{'mean': [...], 'std': [...]}}, "
            f"got {spec!r}"
        )
    if len(mean) != in_channels:
        raise ValueError(
            f"normalize has {len(mean)} channel statistics but the model takes "
            f"{in_channels} input channel(s)"
        )
    return Normalize(mean, std)
