"""Channel-copy: the skew block's initial auxiliary state z(0) (docs/references.md)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def channel_copy(
    x: torch.Tensor, out_channels: int, stride: int = 1, size: Sequence[int] | None = None
) -> torch.Tensor:
    """Repeat x's channels ⌊C_out / C_in⌋ times, then append its first C_out mod C_in.

    For stride 2 the input is first downsampled by nearest-neighbour
    interpolation with factor 0.5 (the reference's), so z(0) has the block's
    output resolution ⌊H/2⌋ × ⌊W/2⌋. ``size``: the block's output resolution
    when it is another — ⌈H/2⌉ for a 3×3 stride-2 kernel on an odd size — taken
    as every second pixel x[..., ::2, ::2], which is what that interpolation
    picks where the two sizes agree.
    """
    if stride == 2:
        half = (x.shape[-2] // 2, x.shape[-1] // 2)
        if size is None or tuple(size) == half:
            x = F.interpolate(x, scale_factor=0.5, mode="nearest")
        else:
            every_second = x[..., ::2, ::2]
            if any(s > n for s, n in zip(size, every_second.shape[-2:], strict=True)):
                raise ValueError(
                    f"channel_copy cannot give a {size[0]}×{size[1]} z(0) with stride 2 from "
                    f"a {x.shape[-2]}×{x.shape[-1]} input"
                )
            x = every_second[..., : size[0], : size[1]]
    elif stride != 1:
        raise ValueError(f"channel_copy supports stride 1 or 2, got {stride}")
    c_in = x.shape[1]
    reps, rest = divmod(out_channels, c_in)
    parts = [x] * reps + ([x[:, :rest]] if rest else [])
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


class ChannelCopy(nn.Module):
    """Module form of :func:`channel_copy` (ODENet's stem: 3 → C channels)."""

    def __init__(self, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_copy(x, self.out_channels, self.stride)

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, stride={self.stride}"
