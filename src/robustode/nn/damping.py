"""Damped residual connections: In-ResNet and λ-In-ResNet (Yang et al., ICML 2020).

LAD's Tables 1–2 compare against these ("damp" and "λ-damp"). With residual
branch f(x) and skip x:

- ``"in_resnet"``:        x_{n+1} = f(x_n) + (1 − λ_n)·x_n,          λ_n = relu(1 − k_n),
  k_n ~ U(0.75, 0.8) at initialisation;
- ``"lambda_in_resnet"``: x_{n+1} = (1 + λ_n)·f(x_n) + (1 − λ_n)·x_n, λ_n = relu(k_n),
  k_n ~ U(0.2, 0.25);
- ``"none"``:             x_{n+1} = f(x_n) + x_n.

k_n is one learnable scalar per block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DAMPINGS = ("none", "in_resnet", "lambda_in_resnet")
_K_INIT = {"in_resnet": (0.75, 0.8), "lambda_in_resnet": (0.2, 0.25)}


class ResidualDamping(nn.Module):
    """Joins a residual branch and its skip path, damped as ``kind`` says."""

    def __init__(self, kind: str = "none") -> None:
        super().__init__()
        if kind not in DAMPINGS:
            raise ValueError(f"unknown damping '{kind}'; choose one of: {', '.join(DAMPINGS)}")
        self.kind = kind
        if kind == "none":
            self.k = None
        else:
            low, high = _K_INIT[kind]
            self.k = nn.Parameter(torch.empty(1).uniform_(low, high))

    @property
    def lam(self) -> torch.Tensor | None:
        """λ_n of the block (None without damping)."""
        if self.kind == "in_resnet":
            return F.relu(1 - self.k)
        if self.kind == "lambda_in_resnet":
            return F.relu(self.k)
        return None

    def forward(self, branch: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return branch + skip
        lam = self.lam.to(branch.dtype)
        if self.kind == "in_resnet":
            return branch + (1 - lam) * skip
        return (1 + lam) * branch + (1 - lam) * skip

    def extra_repr(self) -> str:
        return self.kind
