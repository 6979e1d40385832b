"""SONet (SONet §4, Fig. 2): every layer a stabilised skew-symmetric ODE block.

Skew ODE stem in → w (stride 1) → 4 stages of skew conv ODE blocks, widths
w·[1, 2, 4, 8], the first block of a stage with stride [1, 2, 2, 2] → global
average pool → classifier skew ODE block (``SkewLinearODE``) whose z(1) are
the logits.

Where the paper's text and the reference code differ, ``sonet`` follows the
code (the published 5.94 M parameters at w = 64) and each difference is an
option; ``sonet_paper_text`` is the network the text describes:

======================  ===========================  ==============================
option                  reference code (``sonet``)   paper text (``sonet_paper_text``)
======================  ===========================  ==============================
blocks_per_stage        2                            1 ("each block of ResNet10
                                                     replaced by an ODE block")
downsample_kernel       4 (4×4 stride 2)             3 (Fig. 2: 3×3 Conv, 3×3
                                                     TransConv)
activation_placement    before (σ, then W)           after (eq. 3: σ(Wx + b))
classifier_z0           0.1                          1 ("we set z(0) as 1", §4)
======================  ===========================  ==============================

The feature blocks' z(0) is the channel copy of their input in both (§4: "we
set the initial condition z_k as x_k").
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
        downsample_kernel: int = 4,
        normalize: NormalizeSpec = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        """``options``: the flat ODE options of ``create_model`` (solver, skew, classifier).

        ``downsample_kernel``: the kernel size (4 or 3) of the stride-2 blocks."""
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
                SkewConvODE(
                    c_in,
                    c_out,
                    stride,
                    kernel_size=downsample_kernel if stride == 2 else None,
                    **conv,
                ),
                name,
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
    downsample_kernel: int = 4,
    normalize: NormalizeSpec = None,
    **ode: Any,
) -> SONet:
    return SONet(
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        blocks_per_stage=blocks_per_stage,
        downsample_kernel=downsample_kernel,
        normalize=normalize,
        options=ode,
    )


@register_model(
    "sonet_paper_text",
    paper="SONet §4, Fig. 2 as the text describes it (Table 1 variant)",
    summary="sonet with 1 block/stage, 3×3 stride-2 kernels, classifier σ(Wx+b), z(0) = 1",
    ode_options=SOLVER_OPTIONS + SKEW_OPTIONS,
)
def sonet_paper_text(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 64,
    blocks_per_stage: int = 1,
    downsample_kernel: int = 3,
    activation_placement: str = "after",
    classifier_z0: float = 1.0,
    normalize: NormalizeSpec = None,
    **ode: Any,
) -> SONet:
    # The classifier options are this builder's own (defaults: the text's), so
    # model_config records them and `robustode models` lists them.
    return SONet(
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        blocks_per_stage=blocks_per_stage,
        downsample_kernel=downsample_kernel,
        normalize=normalize,
        options={
            **ode,
            "activation_placement": activation_placement,
            "classifier_z0": classifier_z0,
        },
    )
