"""The plain neural ODE block of Chen et al. (2018), used by ODENet (SONet §6.1).

dx/dt = f(t, x), f = norm → ReLU → conv(concat t) → norm → ReLU → conv(concat t) → norm;
the block's output is x(t1). Nothing constrains its Jacobian: it is the
unstable baseline SONet's skew block is compared with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ode import SolverConfig
from .ode_block import ODEBlock
from .skew import group_norm


class ConcatConv2d(nn.Module):
    """A 3×3 convolution that also sees the time as one constant input channel."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 1, out_channels, 3, padding=1)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # t is 0-dim (batch step control) or (B,) (per-sample step control)
        tt = t.to(x.dtype).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[2:])
        return self.conv(torch.cat([tt, x], dim=1))


class NeuralODEField(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        # GroupNorm(min(8, C)) as in the SONet reference ODENet (Chen et al. use min(32, C)).
        self.norm1, self.norm2, self.norm3 = (group_norm(channels) for _ in range(3))
        self.conv1 = ConcatConv2d(channels, channels)
        self.conv2 = ConcatConv2d(channels, channels)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(t, F.relu(self.norm1(x)))
        out = self.conv2(t, F.relu(self.norm2(out)))
        return self.norm3(out)


class NeuralODEBlock(ODEBlock):
    """x ↦ x(t1) under the Chen et al. field.

    The solver defaults to dopri5 at tolerance 0.1, as the SONet reference
    ODENet runs it (Chen et al.'s own examples use 1e-3).
    """

    def __init__(self, channels: int, *, solver: SolverConfig | None = None, **solver_options):
        super().__init__(solver, **solver_options)
        self.channels = channels
        self.field = NeuralODEField(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.integrate(self.field, x)
