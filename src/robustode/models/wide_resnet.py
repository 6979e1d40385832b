"""Pre-activation WideResNet-34-10, plain and with SONet's ODE stem (SONet §6.1, Table 2).

The standard WRN-34-10 of adversarial training (TRADES and most RobustBench
entries): a 3×3 stem conv 3 → 16, three stages of (depth − 4)/6
pre-activation blocks at widths 16k, 32k, 64k with strides 1, 2, 2, a final
BN + ReLU, global average pool and linear; convolutions have no bias; 46.16 M
parameters at depth 34, k = 10. ``wrn34_10_soblock`` replaces the stem conv
by a skew ODE block 3 → 16, as SONet §6.1 does.

Initialisation as TRADES: conv weights N(0, 2 / (k·k·out_channels)), BN
weight 1 and bias 0, linear bias 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import SkewConvODE
from ..nn.normalize import NormalizeSpec, make_normalize
from ..nn.perturbation import PerturbationPoint
from .base import RobustModel
from .ode_options import SKEW_OPTIONS, SOLVER_OPTIONS, SkewBlockOptions, solver_config
from .registry import register_model

# (base width before widening, stride of the stage's first block)
STAGES = ((16, 1), (32, 2), (64, 2))


class WideBlock(nn.Module):
    """Pre-activation block; on a shape change the 1×1 shortcut sees relu(bn(x)), as in WRN."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, dropout: float, point: str
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
        self.out = PerturbationPoint(point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(h)
        h = self.conv1(h)
        h = self.conv2(self.dropout(F.relu(self.bn2(h))))
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
        normalize: NormalizeSpec = None,
        stem: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n ≥ 1, got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be ≥ 1, got {widen_factor}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        per_stage = (depth - 4) // 6
        self.normalize = make_normalize(normalize, in_channels)
        self.stem = stem or nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.stem_out = PerturbationPoint("stem")
        channels = 16
        for stage, (mult, stride) in enumerate(STAGES, start=1):
            blocks = []
            for index in range(per_stage):
                out = mult * widen_factor
                point = f"layer{stage}.{index}"
                blocks.append(WideBlock(channels, out, stride if index == 0 else 1, dropout, point))
                channels = out
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(channels)
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
    normalize: NormalizeSpec = None,
) -> WideResNet:
    return WideResNet(
        num_classes=num_classes,
        in_channels=in_channels,
        depth=depth,
        widen_factor=widen_factor,
        dropout=dropout,
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
    normalize: NormalizeSpec = None,
    **ode: Any,
) -> WideResNet:
    skew = SkewBlockOptions.from_options(ode)
    stem = SkewConvODE(in_channels, 16, 1, **skew.conv_kwargs(solver_config(ode)))
    model = WideResNet(
        num_classes=num_classes,
        in_channels=in_channels,
        depth=depth,
        widen_factor=widen_factor,
        dropout=dropout,
        normalize=normalize,
        stem=stem,
    )
    return model
