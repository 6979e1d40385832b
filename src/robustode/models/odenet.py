"""ODENet: the plain neural ODE network of Chen et al. (2018), SONet §6.1's comparison.

channel-copy in → w → ``num_blocks`` :class:`~robustode.nn.NeuralODEBlock`\\ s
(nothing constrains their Jacobian) → GroupNorm → adaptive average pool to
3×3 → linear. The SONet reference code's settings: 10 blocks, GroupNorm with
min(8, C) groups, dopri5 at tolerance 0.1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..nn import ChannelCopy, NeuralODEBlock, group_norm
from ..nn.normalize import NormalizeSpec, make_normalize
from ..nn.perturbation import PointAfter
from .base import RobustModel
from .ode_options import SOLVER_OPTIONS, solver_config
from .registry import register_model


class ODENet(RobustModel):
    """Perturbation points: ``blocks.{i}``, the output of each neural ODE block."""

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        num_blocks: int = 10,
        normalize: NormalizeSpec = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise InputError(f"num_blocks must be ≥ 1, got {num_blocks}")
        solver = solver_config(options or {})
        self.normalize = make_normalize(normalize, in_channels)
        self.copy = ChannelCopy(width)
        self.blocks = nn.Sequential(
            *(
                PointAfter(NeuralODEBlock(width, solver=solver), f"blocks.{i}")
                for i in range(num_blocks)
            )
        )
        self.norm = group_norm(width)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.linear = nn.Linear(width * 9, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.copy(self.normalize(x)))
        return self.linear(self.pool(self.norm(h)).flatten(1))


@register_model(
    "odenet",
    paper="SONet §6.1 (plain neural ODE baseline)",
    summary="channel-copy, 10 plain neural ODE blocks, GroupNorm, 3×3 pool, linear",
    ode_options=SOLVER_OPTIONS,
)
def odenet(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 64,
    num_blocks: int = 10,
    normalize: NormalizeSpec = None,
    **ode: Any,
) -> ODENet:
    return ODENet(
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        num_blocks=num_blocks,
        normalize=normalize,
        options=ode,
    )
