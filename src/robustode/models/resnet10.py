"""ResNet10 and SOBlock (SONet §5.1).

ResNet10: 3×3 conv stem + BN + ReLU → 4 stages of post-activation
BasicBlocks (widths w·[1, 2, 4, 8], strides [1, 2, 2, 2]) → global average
pool → linear; 4.90 M parameters at w = 64 (SONet reference code,
docs/references.md). SOBlock is the same network with the stem conv (and its
BN + ReLU) replaced by a skew ODE block 3 → w, stride 1, integrated with
dopri5 at tolerance 0.1.
"""

from __future__ import annotations

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


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


# (width multiplier, stride of the stage's first block)
STAGES = ((1, 1), (2, 2), (4, 2), (8, 2))


class BasicBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv x)))) + shortcut x), shortcut 1×1 conv + BN on shape change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, point: str) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.out = PerturbationPoint(point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.out(F.relu(h + self.shortcut(x)))


class ResNet10(RobustModel):
    """ResNet10 of SONet §5.1, with an optional replacement stem (SOBlock).

    Perturbation points: ``stem`` (the stem's output) and ``layer{s}.{b}``
    (each BasicBlock's output).
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        blocks_per_stage: int = 1,
        normalize: NormalizeSpec = None,
        stem: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.normalize = make_normalize(normalize, in_channels)
        self.stem = stem or nn.Sequential(
            conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.stem_out = PerturbationPoint("stem")
        channels = self.add_stages(
            [(width * mult, stride) for mult, stride in STAGES],
            blocks_per_stage,
            width,
            lambda c_in, c_out, stride, _, name: BasicBlock(c_in, c_out, stride, name),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem_out(self.stem(self.normalize(x)))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return self.linear(self.pool(h).flatten(1))


@register_model(
    "resnet10",
    paper="SONet §5.1 (baseline, Table 1)",
    summary="3×3 stem + BN + ReLU, 4 stages × 1 BasicBlock, widths w·[1,2,4,8]",
)
def resnet10(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 64,
    blocks_per_stage: int = 1,
    normalize: NormalizeSpec = None,
) -> ResNet10:
    return ResNet10(
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        blocks_per_stage=blocks_per_stage,
        normalize=normalize,
    )


@register_model(
    "soblock",
    paper="SONet §5.1 (Tables 1, 3, 4)",
    summary="ResNet10 with the stem replaced by a skew ODE block in→w (dopri5, tol 0.1)",
    ode_options=SOLVER_OPTIONS + SKEW_OPTIONS,
)
def soblock(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 64,
    blocks_per_stage: int = 1,
    normalize: NormalizeSpec = None,
    **ode: Any,
) -> ResNet10:
    skew = SkewBlockOptions.from_options(ode)
    stem = SkewConvODE(in_channels, width, 1, **skew.conv_kwargs(solver_config(ode)))
    return ResNet10(
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        blocks_per_stage=blocks_per_stage,
        normalize=normalize,
        stem=stem,
    )


@register_model(
    "soblock_stable",
    paper="SONet Theorem 3.1 (the block the theorem covers; not trained in the paper)",
    summary="soblock whose stem satisfies Theorem 3.1: no normalisation, γ = 0.1, leaky ReLU",
    ode_options=SOLVER_OPTIONS + SKEW_OPTIONS,
)
def soblock_stable(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 64,
    blocks_per_stage: int = 1,
    normalize: NormalizeSpec = None,
    gamma: float = 0.1,
    norm: str | None = None,
    activation: str = "leaky_relu",
    **ode: Any,
) -> ResNet10:
    # Theorem 3.1 needs σ' > 0 and γ > 0 and says nothing of a normalisation around σ;
    # the reference code's block (soblock) has GroupNorm and γ = 0. The theorem's options
    # are this builder's own, so model_config records them.
    return soblock(
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        blocks_per_stage=blocks_per_stage,
        normalize=normalize,
        **{**ode, "gamma": gamma, "norm": norm, "activation": activation},
    )
