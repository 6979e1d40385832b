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

from ..errors import InputError
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
            raise InputError(f"pre-activation ResNet depth must be 6n + 2 with n ≥ 1, got {depth}")
        per_stage = (depth - 2) // 6
        self.normalize = make_normalize(normalize, in_channels)
        self.stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.stem_out = PerturbationPoint("stem")
        channels = self.add_stages(
            [(width * mult, stride) for mult, stride in STAGES],
            per_stage,
            width,
            # the first block and the downsampling ones (index 0 of a stage) stay plain
            lambda c_in, c_out, stride, index, name: PreActBlock(
                c_in, c_out, stride, "none" if index == 0 else damping, name
            ),
        )
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


def _register_preact(name: str, damping: str, paper: str, summary: str) -> None:
    """Register one PreAct-ResNet variant; the three differ only in their damping."""

    def build(
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        depth: int = 56,
        normalize: NormalizeSpec = None,
    ) -> PreActResNet:
        return PreActResNet(
            num_classes=num_classes,
            in_channels=in_channels,
            width=width,
            depth=depth,
            damping=damping,
            normalize=normalize,
        )

    build.__name__ = name
    register_model(name, paper=paper, summary=summary)(build)


_register_preact(
    "preact_resnet56",
    "none",
    paper="LAD §4 and appendix B.1 (backbone of every table)",
    summary="pre-activation ResNet-56: 3 × 9 basic blocks at 16/32/64 channels",
)
_register_preact(
    "inresnet56",
    "in_resnet",
    paper="LAD Tables 1–2 ('damp'); Yang et al. 2020",
    summary="pre-activation ResNet-56 with In-ResNet damping f(x) + (1 − λ)x",
)
_register_preact(
    "lambda_inresnet56",
    "lambda_in_resnet",
    paper="LAD Tables 1–2 ('λ-damp'); Yang et al. 2020",
    summary="pre-activation ResNet-56 with λ-In-ResNet damping (1 + λ)f(x) + (1 − λ)x",
)
