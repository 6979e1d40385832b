"""The plain neural ODE block of Chen et al. (2018), used by ODENet (SONet §6.1).

dx/dt = f(t, x), f = norm → ReLU → conv(concat t) → norm → ReLU → conv(concat t) → norm;
the block's output is x(t1). Nothing constrains its Jacobian: it is the
unstable baseline SONet's skew block is compared with.

As with the skew fields (:mod:`.skew`), the default implementation computes
the same function faster and ``reference=True`` runs the plain composition:
the fast one keeps the state in its convolutions' memory layout
(:mod:`.layout`), applies ReLU in place, and convolves the time channel
separately (see :meth:`ConcatConv2d.forward_split`) instead of concatenating
it to every input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ode import SolverConfig
from .layout import conv_layout, in_layout, normalize, state_layout
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

    def forward_split(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The same convolution without building the concatenated input.

        The kernel splits into its time channel W_t and the rest W_x, and the time
        channel is the constant image t·1, so conv([t·1, x]) = conv(x, W_x) + b +
        t·conv(1, W_t): the last map depends on the image size only (zero padding
        makes it smaller at the border), is computed once per call on one image,
        and is added in place. This saves a copy of the input per call, and the
        convolution runs on C rather than C + 1 input channels, which oneDNN's
        kernels, blocked by 16 channels, handle without a padded remainder.
        """
        weight = self.conv.weight
        out = F.conv2d(x, weight[:, 1:], self.conv.bias, padding=1)
        ones = x.new_ones(1, 1, *x.shape[2:])
        time_map = F.conv2d(ones, weight[:, :1], padding=1)  # (1, C_out, H, W)
        return out.addcmul_(t.to(x.dtype).reshape(-1, 1, 1, 1), time_map)


class NeuralODEField(nn.Module):
    def __init__(self, channels: int, *, reference: bool = False) -> None:
        super().__init__()
        # GroupNorm(min(8, C)) as in the SONet reference ODENet (Chen et al. use min(32, C)).
        self.norm1, self.norm2, self.norm3 = (group_norm(channels) for _ in range(3))
        self.conv1 = ConcatConv2d(channels, channels)
        self.conv2 = ConcatConv2d(channels, channels)
        self.reference = reference

    def layout(self, x: torch.Tensor) -> torch.memory_format:
        """The memory layout the state is kept in (:mod:`.layout`)."""
        if self.reference:
            return torch.contiguous_format
        conv = conv_layout(x.device, x.shape[-2], x.shape[-1], x.shape[1])
        return state_layout(conv, x.shape[1])

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.reference:
            out = self.conv1(t, F.relu(self.norm1(x)))
            out = self.conv2(t, F.relu(self.norm2(out)))
            return self.norm3(out)
        x = in_layout(x, self.layout(x))
        # GroupNorm's backward reads its input, not its output: ReLU may overwrite it.
        out = self.conv1.forward_split(t, F.relu(normalize(self.norm1, x), inplace=True))
        out = self.conv2.forward_split(t, F.relu(normalize(self.norm2, out), inplace=True))
        return normalize(self.norm3, out)


class NeuralODEBlock(ODEBlock):
    """x ↦ x(t1) under the Chen et al. field.

    The solver defaults to dopri5 at tolerance 0.1, as the SONet reference
    ODENet runs it (Chen et al.'s own examples use 1e-3).
    """

    def __init__(
        self,
        channels: int,
        *,
        reference: bool = False,
        solver: SolverConfig | None = None,
        **solver_options,
    ):
        super().__init__(solver, **solver_options)
        self.channels = channels
        self.field = NeuralODEField(channels, reference=reference)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Solved in the field's layout, handed back in NCHW (see SkewConvODE.forward).
        out = self.integrate(self.field, in_layout(x, self.field.layout(x)))
        return in_layout(out, torch.contiguous_format)
