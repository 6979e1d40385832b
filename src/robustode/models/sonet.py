"""SONet (SONet §4, Fig. 2): every layer a stabilised skew-symmetric ODE block.

Skew ODE stem in → w (stride 1) → 4 stages of skew conv ODE blocks, widths
w·[1, 2, 4, 8], the first block of a stage with stride [1, 2, 2, 2] → global
average pool → classifier skew ODE block (``SkewLinearODE``) whose z(1) are
the logits.

Blocks per stage: the paper says each of ResNet10's blocks is replaced by an
ODE block (one per stage, 2.80 M parameters at w = 64); the reference code's
``sonet()`` builds two per stage, which gives the published 5.94 M. The
default follows the reference code; ``blocks_per_stage=1`` is the paper's
description.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..nn import SkewConvODE, SkewLinearODE
from ..nn.normalize import NormalizeSpec, make_normalize
from ..nn.perturbation import PointAfter
from .base import RobustModel
from .ode_options import (
    CLASSIFIER_OPTIONS,
    SKEW_OPTIONS,
    SOLVER_OPTIONS,
    SkewBlockOptions,
    solver_config,
)
from .registry import register_model
from .resnet10 import STAGES


class SONet(RobustModel):
    """Perturbation points: ``stem`` and ``layer{s}.{b}``, the outputs of the conv ODE blocks."""

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        blocks_per_stage: int = 2,
        normalize: NormalizeSpec = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        """``options``: the flat ODE options of ``create_model`` (solver, skew, classifier)."""
        super().__init__()
        options = options or {}
        skew = SkewBlockOptions.from_options(options)
        solver = solver_config(options)
        conv = skew.conv_kwargs(solver)
        self.normalize = make_normalize(normalize, in_channels)
        self.stem = PointAfter(SkewConvODE(in_channels, width, 1, **conv), "stem")
        channels = self.add_stages(
            [(width * mult, stride) for mult, stride in STAGES],
            blocks_per_stage,
            width,
            lambda c_in, c_out, stride, _, name: PointAfter(
                SkewConvODE(c_in, c_out, stride, **conv), name
            ),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = SkewLinearODE(
            channels, num_classes, **skew.linear_kwargs(options, solver)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(self.normalize(x))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return self.classifier(self.pool(h).flatten(1))


@register_model(
    "sonet",
    paper="SONet §4, Fig. 2 (Tables 1, 4)",
    summary="skew ODE stem + 4 stages of skew conv ODE blocks + pool + skew ODE classifier",
    ode_options=SOLVER_OPTIONS + SKEW_OPTIONS + CLASSIFIER_OPTIONS,
)
def sonet(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 64,
    blocks_per_stage: int = 2,
    normalize: NormalizeSpec = None,
    **ode: Any,
) -> SONet:
    return SONet(
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        blocks_per_stage=blocks_per_stage,
        normalize=normalize,
        options=ode,
    )
