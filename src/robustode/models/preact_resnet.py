"""Pre-activation ResNet-56, LAD's backbone, and its damped variants (LAD Tables 1–2).

stem conv in → w (3×3) → 3 stages × (depth − 2)/6 pre-activation basic
blocks at widths w, 2w, 4w (16/32/64 for w = 16), strides 1, 2, 2 → BN + ReLU
→ global average pool → linear; ≈ 0.86 M parameters at depth 56. A 1×1
projection shortcut (on relu(bn(x))) handles shape changes.

``inresnet56`` and ``lambda_inresnet56`` damp the residual sum of every block
except the first block and the downsampling blocks (In-ResNet / λ-In-ResNet,
Yang et al. 2020; see :mod:`robustode.nn.damping`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.damping import ResidualDamping
from ..nn.normalize import NormalizeSpec, make_normalize
from ..nn.perturbation import PerturbationPoint
from .base import RobustModel
from .registry import register_model

# (width multiplier, stride of the stage's first block)
STAGES = ((1, 1), (2, 2), (4, 2))


class PreActBlock(nn.Module):
    """x_{n+1} = join(f(x_n), skip(x_n)), f = conv(relu(bn(conv(relu(bn x))))); join damped or +."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, damping: str, point: str
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
        self.join = ResidualDamping(damping)
        self.out = PerturbationPoint(point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(h)
        h = self.conv2(F.relu(self.bn2(self.conv1(h))))
        return self.out(self.join(h, skip))


class PreActResNet(RobustModel):
    """Perturbation points: ``stem`` and ``layer{s}.{b}`` (each block's output)."""

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        depth: int = 56,
        damping: str = "none",
        normalize: NormalizeSpec = None,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"pre-activation ResNet depth must be 6n + 2 with n ≥ 1, got {depth}")
        per_stage = (depth - 2) // 6
        self.normalize = make_normalize(normalize, in_channels)
        self.stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.stem_out = PerturbationPoint("stem")
        channels = width
        for stage, (mult, stride) in enumerate(STAGES, start=1):
            blocks = []
            for index in range(per_stage):
                out = width * mult
                first_or_down = index == 0  # the first block and the downsampling ones stay plain
                blocks.append(
                    PreActBlock(
                        channels,
                        out,
                        stride if index == 0 else 1,
                        "none" if first_or_down else damping,
                        f"layer{stage}.{index}",
                    )
                )
                channels = out
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem_out(self.stem(self.normalize(x)))
        h = self.layer3(self.layer2(self.layer1(h)))
        return self.linear(self.pool(F.relu(self.bn(h))).flatten(1))

    def damping_lambdas(self) -> dict[str, float]:
        """λ_n of every damped block, by block name (empty without damping)."""
        return {
            name.removesuffix(".join"): float(module.lam.detach())
            for name, module in self.named_modules()
            if isinstance(module, ResidualDamping) and module.lam is not None
        }


def _preact(damping: str, **options) -> PreActResNet:
    return PreActResNet(damping=damping, **options)


@register_model(
    "preact_resnet56",
    paper="LAD §4 and appendix B.1 (backbone of every table)",
    summary="pre-activation ResNet-56: 3 × 9 basic blocks at 16/32/64 channels",
)
def preact_resnet56(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 16,
    depth: int = 56,
    normalize: NormalizeSpec = None,
) -> PreActResNet:
    return _preact(
        "none",
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        depth=depth,
        normalize=normalize,
    )


@register_model(
    "inresnet56",
    paper="LAD Tables 1–2 ('damp'); Yang et al. 2020",
    summary="pre-activation ResNet-56 with In-ResNet damping f(x) + (1 − λ)x",
)
def inresnet56(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 16,
    depth: int = 56,
    normalize: NormalizeSpec = None,
) -> PreActResNet:
    return _preact(
        "in_resnet",
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        depth=depth,
        normalize=normalize,
    )


@register_model(
    "lambda_inresnet56",
    paper="LAD Tables 1–2 ('λ-damp'); Yang et al. 2020",
    summary="pre-activation ResNet-56 with λ-In-ResNet damping (1 + λ)f(x) + (1 − λ)x",
)
def lambda_inresnet56(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 16,
    depth: int = 56,
    normalize: NormalizeSpec = None,
) -> PreActResNet:
    return _preact(
        "lambda_in_resnet",
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        depth=depth,
        normalize=normalize,
    )
