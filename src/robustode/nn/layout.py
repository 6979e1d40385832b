"""Memory layouts for the convolutional vector fields on the CPU.

A field evaluation is two convolutions and a few memory-bound passes
(GroupNorm, activation). Which memory layout makes oneDNN's convolutions fast
depends on the shape, and every layout change is a full copy, so the ODE
blocks keep their state in the layout their convolutions want for the whole
solve and convert back once, at the block's output. Measured on a 2-core AVX-512
Xeon with torch 2.13, one thread, batch 128, width 32, the other core busy
(benchmarks/RESULTS.md, "Fast fields"):

- NHWC (``channels_last``) convolutions of a 32×32 skew block, forward and
  backward, take 0.6× the CPU time of NCHW ones (0.4× of the wall time on a
  quiet core: oneDNN's NCHW path reorders every input and output into a blocked
  layout, and its transposed stride-2 direction has no fast kernel), so NHWC
  wins although PyTorch's NHWC GroupNorm is slower than its NCHW one (backward
  1.6×). Whole field evaluations in NHWC against NCHW: 0.75–0.85 at 32×32,
  0.85–0.92 at 16×16, 0.92 at 8×8 (stride 1 or 2), 1.25 at 4×4 — so NHWC from
  8×8 on.
- GroupNorm on NHWC tensors with very few channels (the 3-channel image state
  of a stem) is 15× slower than on NCHW, so such small tensors stay NCHW and
  only the convolution sees them as NHWC (a copy of a 3-channel image is cheap).

Only the layout changes: the values are the same up to the rounding of a
different summation order (tests/test_fast_fields.py bounds it). On other
devices the fields keep PyTorch's default layout: nothing was measured there.

The channels-last weight-gradient bug of oneDNN 3.12 that the trainer guards
against (docs/training.md) is in strided 1×1 convolutions; the skew blocks'
kernels are 3×3 and 4×4, and the blocks hand their output back in NCHW, so the
ResNet shortcuts after an SOBlock stem never see a channels-last tensor.
"""

from __future__ import annotations

import torch

CHANNELS_LAST = torch.channels_last
CONTIGUOUS = torch.contiguous_format

# Below this many channels a state tensor stays NCHW (GroupNorm's NHWC kernel
# vectorises over channels).
MIN_NHWC_CHANNELS = 16
# From this many input pixels on, a field evaluates faster in NHWC (8×8; at 4×4 NCHW).
MIN_NHWC_PIXELS = 8 * 8


def conv_layout(
    device: torch.device, height: int, width: int, channels: int
) -> torch.memory_format:
    """The layout in which a field's convolutions on ``height × width`` inputs run, where
    ``channels`` is the larger of its states' channel counts: when both states stay NCHW
    (fewer than ``MIN_NHWC_CHANNELS``), NHWC convolutions would cost two layout copies of
    each state per evaluation."""
    if device.type == "cpu" and height * width >= MIN_NHWC_PIXELS and channels >= MIN_NHWC_CHANNELS:
        return CHANNELS_LAST
    return CONTIGUOUS


def state_layout(conv: torch.memory_format, channels: int) -> torch.memory_format:
    """The layout a state tensor of ``channels`` channels is kept in, given its convolutions'."""
    if conv == CHANNELS_LAST and channels >= MIN_NHWC_CHANNELS:
        return CHANNELS_LAST
    return CONTIGUOUS


def in_layout(v: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """``v`` in ``layout`` (no copy when it already is); its gradient comes back in ``v``'s
    own layout.

    ``Tensor.contiguous`` passes the gradient on in whatever layout it arrives: an ODE
    block that hands back its NHWC state as NCHW would get an NCHW gradient, and the
    whole backward pass of its solve would run in NCHW against NHWC saved tensors —
    a layout copy in every GroupNorm and convolution backward (25 copies of the state
    in the SOBlock stem's solve). Converting the gradient once, here, keeps it NHWC.
    """
    if v.is_contiguous(memory_format=layout):
        return v
    return _InLayout.apply(v, layout)


class _InLayout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
        ctx.source = layout_of(v)
        return v.contiguous(memory_format=layout)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.contiguous(memory_format=ctx.source), None


def is_channels_last(v: torch.Tensor) -> bool:
    """Whether ``v`` is laid out NHWC (and not also NCHW, as a 1-channel or 1×1 tensor is)."""
    return v.dim() == 4 and not v.is_contiguous() and v.is_contiguous(memory_format=CHANNELS_LAST)


def layout_of(v: torch.Tensor) -> torch.memory_format:
    """NHWC or NCHW (anything else: NCHW, as ``contiguous()`` would make it)."""
    return CHANNELS_LAST if is_channels_last(v) else CONTIGUOUS


# Largest |mean| / std of a GroupNorm group left to PyTorch's NHWC kernel. That kernel
# takes the variance as E[x²] − E[x]², summed in float32, whose relative error grows as
# ε·(1 + mean²/var): measured in float32 on 2×16×32×32 tensors, its output is 1.4e-7
# off the float64 value at mean 0, 1.6e-6 at mean/std = 10 and 3.3e-3 at 100 (the NCHW
# kernel, Welford-style: 1e-7, 3e-7 and 3.6e-6). On CIFAR-10 images the groups of
# untrained SOBlock, SONet and ODENet (width 32) stay below 3 (32 test images), so the
# fallback is for unusual inputs.
MEAN_OVER_STD_LIMIT = {torch.float64: 64.0}
DEFAULT_MEAN_OVER_STD_LIMIT = 4.0


def normalize(norm: torch.nn.Module, v: torch.Tensor) -> torch.Tensor:
    """``norm(v)``, steering clear of the NHWC GroupNorm kernel's large errors and of a
    torch 2.13 crash.

    On an NHWC ``v`` a GroupNorm runs PyTorch's NHWC kernel (no layout copy), unless

    - the groups' means are large against their spread (``MEAN_OVER_STD_LIMIT``): the
      mean and rstd that kernel returns tell, and the group norm is recomputed in NCHW —
      the reference's kernel — and handed back in NHWC;
    - ``v`` needs no gradient while GroupNorm's weight does (the first evaluation of
      a stem, whose state is the image): torch 2.13's NHWC backward kernel then writes
      an input gradient nobody allocated and the backward pass segfaults, so such an
      input, a handful of evaluations per solve, is normalised in NCHW too.
    """
    if not (isinstance(norm, torch.nn.GroupNorm) and is_channels_last(v)):
        return norm(v)
    if (
        torch.is_grad_enabled()
        and not v.requires_grad
        and any(p.requires_grad for p in norm.parameters())
    ):
        return _in_nchw(norm, v)
    n, c, h, w = v.shape
    y, mean, rstd = torch.ops.aten.native_group_norm(
        v, norm.weight, norm.bias, n, c, h * w, norm.num_groups, norm.eps
    )
    limit = MEAN_OVER_STD_LIMIT.get(v.dtype, DEFAULT_MEAN_OVER_STD_LIMIT)
    if float((mean * rstd).detach().abs().max()) > limit:
        return _in_nchw(norm, v)
    return y


def _in_nchw(norm: torch.nn.Module, v: torch.Tensor) -> torch.Tensor:
    return in_layout(norm(v.contiguous()), CHANNELS_LAST)
