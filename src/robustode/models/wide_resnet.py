"""Pre-activation WideResNet-34-10, plain and with SONet's ODE stem (SONet §6.1, Table 2).

The standard WRN-34-10 of adversarial training (TRADES and most RobustBench
entries): a 3×3 stem conv 3 → 16, three stages of (depth − 4)/6
pre-activation blocks at widths 16k, 32k, 64k with strides 1, 2, 2, a final
BN + ReLU, global average pool and linear; convolutions have no bias; 46.16 M
parameters at depth 34, k = 10. ``wrn34_10_soblock`` replaces the stem conv
by a skew ODE block 3 → 16, as SONet §6.1 does.

Initialisation as TRADES: conv weights N(0, 2 / (k·k·out_channels)), BN
weight 1 and bias 0, linear bias 0.

``block_style``: ``"trades"`` is the block above (stride on the first conv,
no conv bias, the projection shortcut sees relu(bn(x))). The SONet reference
code builds its WRN-34-10 + ODE stem from a different block,
``"sonet_reference"``: convolutions with bias, stride on the second conv, the
shortcut (1×1 conv with bias) on the raw input, and a final BatchNorm with
momentum 0.9 (PyTorch's convention: the running statistics mostly follow the
latest batch). ``wrn34_10_soblock`` defaults to the reference's style, since
that produced SONet's Table 2; ``wrn34_10`` to TRADES'.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..nn import SkewConvODE
from ..nn.normalize import NormalizeSpec, make_normalize
from ..nn.perturbation import PerturbationPoint
from .base import RobustModel
from .ode_options import SKEW_OPTIONS, SOLVER_OPTIONS, SkewBlockOptions, solver_config
from .registry import register_model

# (base width before widening, stride of the stage's first block)
STAGES = ((16, 1), (32, 2), (64, 2))


BLOCK_STYLES = ("trades", "sonet_reference")


class WideBlock(nn.Module):
    """Pre-activation wide block in one of :data:`BLOCK_STYLES` (see the module docstring)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        dropout: float,
        point: str,
        style: str = "trades",
    ) -> None:
        super().__init__()
        reference = style == "sonet_reference"
        stride1, stride2 = (1, stride) if reference else (stride, 1)
        self.raw_shortcut = reference
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride1, 1, bias=reference)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride2, 1, bias=reference)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=reference)
        self.out = PerturbationPoint(point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(x))
        if self.shortcut is None:
            skip = x
        else:
            skip = self.shortcut(x if self.raw_shortcut else h)
        h = self.dropout(self.conv1(h)) if self.raw_shortcut else self.conv1(h)
        h = F.relu(self.bn2(h))
        h = self.conv2(h if self.raw_shortcut else self.dropout(h))
        return self.out(h + skip)


class WideResNet(RobustModel):
    """Perturbation points: ``stem`` and ``layer{s}.{b}`` (each block's output)."""

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        depth: int = 34,
        widen_factor: int = 10,
        dropout: float = 0.0,
        block_style: str = "trades",
        normalize: NormalizeSpec = None,
        stem: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if block_style not in BLOCK_STYLES:
            raise InputError(
                f"unknown block_style '{block_style}'; choose one of: {', '.join(BLOCK_STYLES)}"
            )
        if depth < 10 or (depth - 4) % 6:
            raise InputError(f"WideResNet depth must be 6n + 4 with n ≥ 1, got {depth}")
        if widen_factor < 1:
            raise InputError(f"widen_factor must be ≥ 1, got {widen_factor}")
        if not 0 <= dropout < 1:
            raise InputError(f"dropout must be in [0, 1), got {dropout}")
        per_stage = (depth - 4) // 6
        self.normalize = make_normalize(normalize, in_channels)
        self.stem = stem or nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.stem_out = PerturbationPoint("stem")
        channels = self.add_stages(
            [(base * widen_factor, stride) for base, stride in STAGES],
            per_stage,
            16,
            lambda c_in, c_out, stride, _, name: WideBlock(
                c_in, c_out, stride, dropout, name, block_style
            ),
        )
        # The reference's 0.9 was probably meant TF-style (= 0.1 here); kept for fidelity.
        momentum = 0.9 if block_style == "sonet_reference" else 0.1
        self.bn = nn.BatchNorm2d(channels, momentum=momentum)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem_out(self.stem(self.normalize(x)))
        h = self.layer3(self.layer2(self.layer1(h)))
        return self.linear(self.pool(F.relu(self.bn(h))).flatten(1))


@register_model(
    "wrn34_10",
    paper="SONet §6.1 (Table 2); the usual adversarial-training backbone",
    summary="pre-activation WideResNet-34-10 (depth, widen_factor configurable)",
)
def wrn34_10(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    depth: int = 34,
    widen_factor: int = 10,
    dropout: float = 0.0,
    block_style: str = "trades",
    normalize: NormalizeSpec = None,
) -> WideResNet:
    return WideResNet(
        num_classes=num_classes,
        in_channels=in_channels,
        depth=depth,
        widen_factor=widen_factor,
        dropout=dropout,
        block_style=block_style,
        normalize=normalize,
    )


@register_model(
    "wrn34_10_soblock",
    paper="SONet §6.1 (Table 2)",
    summary="WideResNet-34-10 with the stem conv replaced by a skew ODE block in→16",
    ode_options=SOLVER_OPTIONS + SKEW_OPTIONS,
)
def wrn34_10_soblock(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    depth: int = 34,
    widen_factor: int = 10,
    dropout: float = 0.0,
    block_style: str = "sonet_reference",
    normalize: NormalizeSpec = None,
    **ode: Any,
) -> WideResNet:
    skew = SkewBlockOptions.from_options(ode)
    stem = SkewConvODE(in_channels, 16, 1, **skew.conv_kwargs(solver_config(ode)))
    return WideResNet(
        num_classes=num_classes,
        in_channels=in_channels,
        depth=depth,
        widen_factor=widen_factor,
        dropout=dropout,
        block_style=block_style,
        normalize=normalize,
        stem=stem,
    )
