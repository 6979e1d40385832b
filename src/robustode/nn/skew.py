"""Stabilised skew-symmetric ODE blocks — SONet eq. (3), Theorem 3.1.

    dz/dt = σ(W x − γ z),    dx/dt = σ(−Wᵀ z − γ x),    output z(t1)

With W⁽²⁾ = −W⁽¹⁾ᵀ the linear part [[0, −Wᵀ], [W, 0]] is skew-symmetric, so
the linearised flow is orthogonal (norm-preserving, eq. 4) and, for σ′ > 0 and
γ > 0, every eigenvalue of the Jacobian has negative real part (Theorem 3.1).

For convolutions W is a kernel: ``conv2d(·, W)`` is W and
``conv_transpose2d(·, W)`` with the same kernel, stride and padding is exactly
its adjoint Wᵀ once its output has the input's spatial size, which
``output_padding`` sets (the transposed convolution's output size is ambiguous
for stride 2). Stride 1 uses 3×3 kernels; stride 2 uses 4×4 (the reference
code's: 16 → 32 maps back with no output padding) or 3×3 (the paper's Fig. 2:
a 3×3 conv and a 3×3 transposed conv; 16 → 31, padded to 32), both padding 1.

Defaults follow the SONet reference code (docs/references.md): GroupNorm on each
state before the maps and after the activation, LeakyReLU(0.01), γ = 0, no
bias, z(0) = channel-copy of the input, classifier z(0) = 0.1·1. Setting
``norm=None`` gives the plain eq. (3) that the theorem is about;
``skew=False`` replaces −Wᵀ by an independent kernel (the unconstrained
baseline of the stability experiment).

Each field has two implementations of the same function: the default one
keeps the state in the memory layout its convolutions run fastest in
(:mod:`.layout`), applies σ and the damping in place on the fresh convolution
outputs and, in the linear field, fuses the biases into the matrix products;
``reference=True`` runs the plain composition of PyTorch modules above, which
the tests compare the default with (tests/test_fast_fields.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ode import SolverConfig
from .activations import get_activation
from .channel_copy import channel_copy
from .layout import (
    CHANNELS_LAST,
    CONTIGUOUS,
    conv_layout,
    in_layout,
    normalize,
    state_layout,
)
from .ode_block import ODEBlock

NORMS = ("group", None)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with min(8, C) groups (the reference's); gcd(8, C) if that does not divide C."""
    groups = min(8, channels)
    if channels % groups:
        groups = math.gcd(8, channels)
    return nn.GroupNorm(groups, channels)


def _norm_or_identity(norm: str | None, channels: int) -> nn.Module:
    if norm == "group":
        return group_norm(channels)
    if norm is None:
        return nn.Identity()
    raise ValueError(f"unknown norm '{norm}'; choose 'group' or None")


# Kernel sizes per stride (padding 1 for all): the first is the default (the reference's).
KERNEL_SIZES = {1: (3,), 2: (4, 3)}


def check_kernel_size(stride: int, kernel_size: int | None) -> int:
    """The kernel size of a skew conv block: ``None`` is the reference's for ``stride``."""
    allowed = KERNEL_SIZES[stride]
    if kernel_size is None:
        return allowed[0]
    if isinstance(kernel_size, bool) or kernel_size not in allowed:
        raise ValueError(
            f"a stride-{stride} skew block takes kernel size "
            f"{' or '.join(map(str, allowed))}, got {kernel_size!r}"
        )
    return int(kernel_size)


def _kernel(out_channels: int, in_channels: int, k: int) -> nn.Parameter:
    weight = torch.empty(out_channels, in_channels, k, k)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # as nn.Conv2d initialises
    return nn.Parameter(weight)


class SkewConvField(nn.Module):
    """The vector field of :class:`SkewConvODE` on the state (x, z)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        gamma: float = 0.0,
        norm: str | None = "group",
        activation: str = "leaky_relu",
        skew: bool = True,
        reference: bool = False,
        kernel_size: int | None = None,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if gamma < 0:
            raise ValueError(f"gamma (damping) must be ≥ 0, got {gamma}")
        self.stride = stride
        self.kernel_size, self.padding = check_kernel_size(stride, kernel_size), 1
        self.gamma = float(gamma)
        self.skew = skew
        self.activation_name = activation
        self.sigma = get_activation(activation)
        self.sigma_ = get_activation(activation, inplace=True)
        self.reference = reference
        self.weight = _kernel(out_channels, in_channels, self.kernel_size)
        # The unconstrained baseline: an independent kernel in place of −Wᵀ.
        self.weight_back = None if skew else _kernel(out_channels, in_channels, self.kernel_size)
        self.norm_x_in = _norm_or_identity(norm, in_channels)
        self.norm_z_in = _norm_or_identity(norm, out_channels)
        self.norm_x_out = _norm_or_identity(norm, in_channels)
        self.norm_z_out = _norm_or_identity(norm, out_channels)

    def z_shape(self, x_shape: torch.Size, out_channels: int) -> tuple[int, ...]:
        h, w = x_shape[-2:]
        k, p, s = self.kernel_size, self.padding, self.stride
        return (x_shape[0], out_channels, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)

    def layouts(
        self, x_shape: torch.Size, device: torch.device
    ) -> tuple[torch.memory_format, torch.memory_format, torch.memory_format]:
        """Memory layouts of (the convolutions, x, z) for an input of ``x_shape``."""
        if self.reference:
            return CONTIGUOUS, CONTIGUOUS, CONTIGUOUS
        out_channels, in_channels = self.weight.shape[:2]
        conv = conv_layout(device, x_shape[-2], x_shape[-1], max(in_channels, out_channels))
        return conv, state_layout(conv, in_channels), state_layout(conv, out_channels)

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        if self.reference:
            return self._forward_reference(state)
        return self._forward_fast(state)

    def _forward_reference(self, state: tuple[torch.Tensor, torch.Tensor]):
        x, z = state
        xn, zn = self.norm_x_in(x), self.norm_z_in(z)
        dz = F.conv2d(xn, self.weight, stride=self.stride, padding=self.padding)
        back = -self.weight if self.weight_back is None else self.weight_back
        dx = F.conv_transpose2d(
            zn, back, stride=self.stride, padding=self.padding, output_padding=self._extra(x, z)
        )
        if self.gamma:
            dz = dz - self.gamma * zn
            dx = dx - self.gamma * xn
        return self.norm_x_out(self.sigma(dx)), self.norm_z_out(self.sigma(dz))

    def _forward_fast(self, state: tuple[torch.Tensor, torch.Tensor]):
        x, z = state
        conv, x_layout, z_layout = self.layouts(x.shape, x.device)
        x, z = in_layout(x, x_layout), in_layout(z, z_layout)
        xn, zn = normalize(self.norm_x_in, x), normalize(self.norm_z_in, z)
        back = -self.weight if self.weight_back is None else self.weight_back
        dz = F.conv2d(
            xn, _for_conv(self.weight, x_layout, conv), stride=self.stride, padding=self.padding
        )
        dx = F.conv_transpose2d(
            zn,
            _for_conv(back, z_layout, conv),
            stride=self.stride,
            padding=self.padding,
            output_padding=self._extra(x, z),
        )
        dz, dx = in_layout(dz, z_layout), in_layout(dx, x_layout)
        # Both are fresh convolution outputs that no backward reads: damp and activate
        # them in place (add_ with alpha is the reference's dz − γ·zn in one pass).
        if self.gamma:
            dz = dz.add_(zn, alpha=-self.gamma)
            dx = dx.add_(xn, alpha=-self.gamma)
        return normalize(self.norm_x_out, self.sigma_(dx)), normalize(
            self.norm_z_out, self.sigma_(dz)
        )

    def _extra(self, x: torch.Tensor, z: torch.Tensor) -> tuple[int, int]:
        # output_padding restores the input's spatial size for stride 2 (odd sizes with 4×4
        # kernels, even ones with 3×3): the transposed convolution is then exactly the adjoint
        # of the convolution on x's shape.
        return (
            x.shape[-2] - self._back_size(z.shape[-2]),
            x.shape[-1] - self._back_size(z.shape[-1]),
        )

    def _back_size(self, n: int) -> int:
        return (n - 1) * self.stride - 2 * self.padding + self.kernel_size


def _for_conv(
    weight: torch.Tensor, input_layout: torch.memory_format, conv: torch.memory_format
) -> torch.Tensor:
    """The kernel as the convolution should see it: PyTorch runs a convolution in
    channels-last when its input or its kernel is, so a small NCHW state (the stem's
    3-channel image) is convolved in channels-last by handing over the kernel in it."""
    if conv == CHANNELS_LAST and input_layout != CHANNELS_LAST:
        return in_layout(weight, CHANNELS_LAST)
    return weight


class SkewConvODE(ODEBlock):
    """Convolutional skew-symmetric ODE block (SONet eq. 3): input x → output z(t1).

    ``z0``: ``"channel_copy"`` (reference) or ``"zeros"`` (the theorem's
    alternative with ‖x(t)‖ ≤ ‖x(0)‖).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        gamma: float = 0.0,
        norm: str | None = "group",
        activation: str = "leaky_relu",
        z0: str = "channel_copy",
        skew: bool = True,
        reference: bool = False,
        kernel_size: int | None = None,
        solver: SolverConfig | None = None,
        **solver_options,
    ) -> None:
        super().__init__(solver, **solver_options)
        if z0 not in ("channel_copy", "zeros"):
            raise ValueError(f"unknown z0 '{z0}'; choose 'channel_copy' or 'zeros'")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.z0 = z0
        self.field = SkewConvField(
            in_channels,
            out_channels,
            stride,
            gamma=gamma,
            norm=norm,
            activation=activation,
            skew=skew,
            reference=reference,
            kernel_size=kernel_size,
        )

    def initial_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, z(0)), each in the memory layout the field keeps it in during the solve."""
        shape = self.field.z_shape(x.shape, self.out_channels)
        if self.z0 == "zeros":
            z = x.new_zeros(shape)
        else:
            z = channel_copy(x, self.out_channels, self.stride, size=shape[-2:])
        _, x_layout, z_layout = self.field.layouts(x.shape, x.device)
        return in_layout(x, x_layout), in_layout(z, z_layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SkewConvODE expects (N, {self.in_channels}, H, W) input, got {tuple(x.shape)}"
            )
        _, z = self.integrate(self.field, self.initial_state(x))
        # NCHW out, whatever the solve ran in: the layers after the block (a ResNet's
        # strided 1×1 shortcuts among them) run as they would after a plain stem.
        return in_layout(z, CONTIGUOUS)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}→{self.out_channels}, stride={self.stride}, "
            f"kernel={self.field.kernel_size}, gamma={self.field.gamma}, z0={self.z0}, "
            f"skew={self.field.skew}, "
            f"{super().extra_repr()}"
        )


class SkewLinearField(nn.Module):
    """The vector field of :class:`SkewLinearODE` on (x: features, z: classes).

    ``placement="before"`` (reference code): dz = σ(x)W + b_z − γz,
    dx = −σ(z)Wᵀ + b_x − γx. ``placement="after"`` (paper eq. 3):
    dz = σ(xW + b_z − γz), dx = σ(−zWᵀ + b_x − γx).
    """

    def __init__(
        self,
        features: int,
        classes: int,
        *,
        gamma: float = 0.0,
        activation: str = "leaky_relu",
        placement: str = "before",
        bias: bool = True,
        skew: bool = True,
        reference: bool = False,
    ) -> None:
        super().__init__()
        if placement not in ("before", "after"):
            raise ValueError(f"unknown activation placement '{placement}'; choose before/after")
        if gamma < 0:
            raise ValueError(f"gamma (damping) must be ≥ 0, got {gamma}")
        self.gamma, self.placement = float(gamma), placement
        self.sigma = get_activation(activation)
        self.sigma_ = get_activation(activation, inplace=True)
        self.reference = reference
        # The reference initialises its (features, classes) weight with
        # kaiming_uniform(a=√5), whose fan-in is the class count: bound 1/√classes.
        bound = 1.0 / math.sqrt(classes)
        self.weight = nn.Parameter(torch.empty(features, classes).uniform_(-bound, bound))
        self.weight_back = (
            None if skew else nn.Parameter(torch.empty(features, classes).uniform_(-bound, bound))
        )
        self.bias_z = nn.Parameter(torch.empty(classes).uniform_(-bound, bound)) if bias else None
        self.bias_x = nn.Parameter(torch.empty(features).uniform_(-bound, bound)) if bias else None

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        if self.reference:
            return self._forward_reference(state)
        return self._forward_fast(state)

    def _forward_fast(self, state: tuple[torch.Tensor, torch.Tensor]):
        x, z = state
        if self.placement == "before":
            x, z = self.sigma(x), self.sigma(z)
        # The biases ride in the matrix products (addmm), and −Wᵀ is alpha = −1 on Wᵀ.
        if self.weight_back is None:
            back, sign = self.weight, -1.0
        else:
            back, sign = self.weight_back, 1.0
        if self.bias_z is not None:
            dz = torch.addmm(self.bias_z, x, self.weight)
            dx = torch.addmm(self.bias_x, z, back.T, alpha=sign)
        else:
            dz = x @ self.weight
            dx = z @ back.T if sign > 0 else torch.mm(z, back.T).neg_()
        if self.gamma:
            dz = dz.add_(state[1], alpha=-self.gamma)
            dx = dx.add_(state[0], alpha=-self.gamma)
        if self.placement == "after":
            dz, dx = self.sigma_(dz), self.sigma_(dx)
        return dx, dz

    def _forward_reference(self, state: tuple[torch.Tensor, torch.Tensor]):
        x, z = state
        back = -self.weight if self.weight_back is None else self.weight_back
        if self.placement == "before":
            dz, dx = self.sigma(x) @ self.weight, self.sigma(z) @ back.T
        else:
            dz, dx = x @ self.weight, z @ back.T
        if self.bias_z is not None:
            dz, dx = dz + self.bias_z, dx + self.bias_x
        if self.gamma:
            dz, dx = dz - self.gamma * z, dx - self.gamma * x
        if self.placement == "after":
            dz, dx = self.sigma(dz), self.sigma(dx)
        return dx, dz


class SkewLinearODE(ODEBlock):
    """The classifier skew ODE block (SONet §4): features → logits z(t1).

    z(0) = ``z0``·1 with ``z0 = 0.1`` (reference code; the paper says 1).
    """

    def __init__(
        self,
        features: int,
        classes: int,
        *,
        gamma: float = 0.0,
        activation: str = "leaky_relu",
        placement: str = "before",
        bias: bool = True,
        z0: float = 0.1,
        skew: bool = True,
        reference: bool = False,
        solver: SolverConfig | None = None,
        **solver_options,
    ) -> None:
        super().__init__(solver, **solver_options)
        self.features, self.classes, self.z0 = features, classes, float(z0)
        self.field = SkewLinearField(
            features,
            classes,
            gamma=gamma,
            activation=activation,
            placement=placement,
            bias=bias,
            skew=skew,
            reference=reference,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(
                f"SkewLinearODE expects (N, {self.features}) input, got {tuple(x.shape)}"
            )
        z = x.new_full((x.shape[0], self.classes), self.z0)
        _, z = self.integrate(self.field, (x, z))
        return z

    def extra_repr(self) -> str:
        return f"{self.features}→{self.classes}, z0={self.z0}, {super().extra_repr()}"
