"""Small honest and masked constructions on scikit-learn's digits (8×8) for the audit's tests:
a straight-through 3-bit quantiser and a BPDA 3×3 median filter (honest: their surrogate
gradient is what PGD needs), saturated logits and a shuffled backward pass (masked: PGD
fails where gradient-free attacks succeed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StraightThroughQuantiser(nn.Module):
    """round(x·(2^bits − 1))/(2^bits − 1) forward, identity backward (straight-through)."""

    def __init__(self, net: nn.Module, bits: int = 3) -> None:
        super().__init__()
        self.net, self.levels = net, 2**bits - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.round(x * self.levels) / self.levels
        return self.net(x + (q - x).detach())


def median3x3(x: torch.Tensor) -> torch.Tensor:
    """3×3 median filter with reflected borders."""
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    windows = padded.unfold(2, 3, 1).unfold(3, 3, 1)
    return windows.reshape(*x.shape, 9).median(-1).values


class BPDAMedian(nn.Module):
    """A 3×3 median filter forward, identity backward (BPDA, Athalye et al. 2018)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + (median3x3(x) - x).detach())


class Saturated(nn.Module):
    """Logits × 1e4: float32 softmax saturates, the CE gradient vanishes (masked)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * 1e4


class _Shuffle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(perm)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (perm,) = ctx.saved_tensors
        flat = grad.flatten(1)[:, perm]
        return flat.view_as(grad), None


class ShuffledGradient(nn.Module):
    """The network's own output, its input gradient's pixels permuted (a fake gradient)."""

    def __init__(self, net: nn.Module, seed: int = 0) -> None:
        super().__init__()
        self.net = net
        self.register_buffer(
            "perm", torch.randperm(64, generator=torch.Generator().manual_seed(seed))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_Shuffle.apply(x, self.perm))


def digits_cnn(seed: int = 0) -> nn.Module:
    """A small CNN trained naturally on the digits' training split: 15 epochs of Adam
    (lr 3e-3, batch 64), about 3 s on one core; clean accuracy ≈ 0.97–0.99."""
    from robustode.data.digits import load_digits

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip
    train = load_digits(split="train")
    x, y = train.float_images(), train.labels
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(15):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def digits_test(n: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    from robustode.data.digits import load_digits

    test = load_digits(split="test")
    return test.float_images()[:n], test.labels[:n]
