"""How far adjoint gradients are from backprop's on a skew conv block (docs/ode-engine.md).

A 2→4-channel SkewConvODE, dopri5 tol 1e-6, float64, batch 2 of 6×6 inputs;
for each field (norm × activation) the parameter gradients of Σ out² by the
adjoint method (robustode's and torchdiffeq's) against backprop through the
solver: the largest difference over the largest gradient, and the worst
tensor's ‖Δ‖/‖g‖.

    python -m benchmarks.adjoint_accuracy
"""

from __future__ import annotations

import torch

from robustode.nn import SkewConvODE

FIELDS = [
    (None, "tanh", "no norm, tanh"),
    ("group", "tanh", "GroupNorm, tanh"),
    (None, "leaky_relu", "no norm, LeakyReLU"),
    ("group", "leaky_relu", "GroupNorm, LeakyReLU (the reference block)"),
]


def errors(norm: str | None, activation: str, backend: str) -> tuple[float, float]:
    torch.manual_seed(2)
    kw = dict(method="dopri5", tol=1e-6, activation=activation, norm=norm)
    backprop = SkewConvODE(2, 4, **kw).double()
    adjoint = SkewConvODE(2, 4, adjoint=True, backend=backend, **kw).double()
    adjoint.load_state_dict(backprop.state_dict())
    x = torch.rand(2, 2, 6, 6, dtype=torch.float64)
    ga = torch.autograd.grad(backprop(x).pow(2).sum(), list(backprop.parameters()))
    gb = torch.autograd.grad(adjoint(x).pow(2).sum(), list(adjoint.parameters()))
    scale = max(float(g.abs().max()) for g in ga)
    largest = max(float((a - b).abs().max()) for a, b in zip(ga, gb, strict=True)) / scale
    worst = max(float((a - b).norm() / a.norm()) for a, b in zip(ga, gb, strict=True))
    return largest, worst


def main() -> None:
    torch.set_num_threads(1)
    print("| field | max abs diff / max grad | worst tensor rel. | torchdiffeq's adjoint |")
    print("|---|---:|---:|---|")
    for norm, activation, name in FIELDS:
        ours = errors(norm, activation, "native")
        ref = errors(norm, activation, "torchdiffeq")
        same = "same" if ours == ref else f"{ref[0]:.2g} / {ref[1]:.2g}"
        print(f"| {name} | {ours[0]:.2g} | {ours[1]:.2g} | {same} |")


if __name__ == "__main__":
    main()
