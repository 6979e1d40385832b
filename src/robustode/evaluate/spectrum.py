"""SONet Theorem 3.1 on a trained model: the spectrum of each ODE block's field at real
data, and how much the block amplifies a small perturbation.

Theorem 3.1 says a skew block dz/dt = σ(Wx − γz), dx/dt = σ(−Wᵀz − γx) is
Lyapunov-stable when σ' > 0 and γ > 0: its Jacobian D(A − γI) (A skew, D
diagonal positive) has eigenvalues with negative real parts. The blocks the
papers trained differ (GroupNorm around σ, γ = 0), so whether a trained block
satisfies the theorem is a measurement, not a given. For every ODE block of a
model and every image, :func:`block_stability` reports

- ``max_real_eig``: the largest real part of the eigenvalues of ∂F/∂s, the
  field's Jacobian with respect to the whole state s = (x, z), at the block's
  initial state (t = 0) and at its final state (t = t1). The Jacobian is
  applied matrix-free, each product a central difference of the field in
  float64 (so any field implementation works, whatever its autograd); up to
  ``DENSE_LIMIT`` dimensions (digits-scale blocks) the matrix is built and
  decomposed exactly, beyond it restarted Arnoldi (ARPACK) is tried and NaN
  reported where it does not converge;
- ``amplification``: ‖B(u + δ) − B(u)‖ / ‖δ‖ of the block's map u ↦ B(u) for
  small random δ (relative size ``delta``) — the growth the theorem bounds;
- ``conditions``: what Theorem 3.1 assumes and whether this block has it
  (skew weights, γ > 0, σ strictly increasing, no normalisation in the field).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..nn.ode_block import ODEBlock, named_ode_blocks

# σ with σ' > 0 everywhere (the theorem's assumption); ReLU's is 0 on half the line
STRICTLY_INCREASING = ("leaky_relu", "tanh", "sigmoid", "elu", "softplus", "identity")
_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._NormBase)


@dataclass
class SolveCapture:
    """One solve of one block: its field, and initial and final states (batch, detached)."""

    name: str
    block: ODEBlock
    field: nn.Module
    initial: tuple[torch.Tensor, ...]
    final: tuple[torch.Tensor, ...]
    block_input: torch.Tensor


@contextlib.contextmanager
def capture_solves(model: nn.Module) -> Iterator[list[SolveCapture]]:
    """While active, every ODE block's ``integrate`` records what it integrated."""
    captured: list[SolveCapture] = []
    patched: list[tuple[ODEBlock, Any]] = []
    inputs: dict[int, torch.Tensor] = {}
    hooks = []
    for name, block in named_ode_blocks(model):
        original = block.integrate

        def integrate(fld, state, *, _block=block, _name=name, _original=original):
            out = _original(fld, state)
            initial = state if isinstance(state, tuple | list) else (state,)
            final = out if isinstance(out, tuple | list) else (out,)
            captured.append(
                SolveCapture(
                    _name or "(model)",
                    _block,
                    fld,
                    tuple(t.detach() for t in initial),
                    tuple(t.detach() for t in final),
                    inputs.get(id(_block), initial[0]).detach(),
                )
            )
            return out

        block.integrate = integrate  # type: ignore[method-assign]
        patched.append((block, original))
        hooks.append(block.register_forward_pre_hook(functools.partial(_keep_input, inputs)))
    try:
        yield captured
    finally:
        for block, _ in patched:
            del block.integrate  # back to the class's method
        for hook in hooks:
            hook.remove()


def _keep_input(inputs: dict[int, torch.Tensor], module: nn.Module, args: tuple) -> None:
    inputs[id(module)] = args[0]


def _flat(state: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.cat([s.reshape(-1) for s in state])


def _unflat(vector: torch.Tensor, like: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    out, start = [], 0
    for s in like:
        out.append(vector[start : start + s.numel()].view_as(s))
        start += s.numel()
    return tuple(out)


def field_jacobian_operator(field_fn: nn.Module, state: tuple[torch.Tensor, ...], t: float = 0.0):
    """v ↦ (∂F/∂s) v at ``state`` (one image, float64), by central differences."""
    base = tuple(s.double() for s in state)
    flat = _flat(base)
    scale = max(float(flat.abs().max()), 1.0)
    time = torch.tensor(t, dtype=torch.float64)

    def evaluate(vector: torch.Tensor) -> torch.Tensor:
        out = field_fn(time, _unflat(vector, base))
        return _flat(out if isinstance(out, tuple | list) else (out,))

    def apply(v: torch.Tensor) -> torch.Tensor:
        h = 1e-6 * scale / max(float(v.norm()), 1e-30)
        return (evaluate(flat + h * v) - evaluate(flat - h * v)) / (2 * h)

    return apply, flat.numel()


# dense eigen-decomposition up to this many state dimensions (a 4096² float64 matrix is
# 134 MB and decomposes in seconds); beyond, restarted Arnoldi
DENSE_LIMIT = 4096


@torch.no_grad()
def max_real_eigenvalue(
    apply: Any,
    size: int,
    *,
    krylov: int = 40,
    seed: int = 0,
    dense_limit: int = DENSE_LIMIT,
    max_restarts: int = 300,
) -> float:
    """The largest real part among the eigenvalues of the operator ``apply`` (size×size).

    Up to ``dense_limit`` dimensions the matrix is built column by column and decomposed
    exactly. Beyond, ARPACK's implicitly restarted Arnoldi (``which="LR"``, ``krylov`` basis
    vectors, at most ``max_restarts`` restarts) looks for the rightmost eigenvalues, and
    the result is NaN when it does not converge — it does not on clustered spectra such as
    a damped skew block's (γ·σ' repeated), and an unconverged Ritz value is no bound: the
    fields are far from normal, and plain Arnoldi's Ritz values wander over the numerical
    range, whose right edge can lie past every eigenvalue (measured: +0.009 for a block
    whose spectrum is strictly negative).
    """
    import numpy as np
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs

    if size <= max(dense_limit, 2):
        eye = torch.eye(size, dtype=torch.float64)
        columns = [apply(eye[i]) for i in range(size)]
        return float(torch.linalg.eigvals(torch.stack(columns, dim=1)).real.max())
    operator = LinearOperator(
        (size, size),
        matvec=lambda v: (
            apply(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))).numpy().copy()
        ),
        dtype=np.float64,
    )
    start = np.random.default_rng(seed).standard_normal(size)
    try:
        values = eigs(
            operator, k=2, which="LR", ncv=min(size - 1, max(krylov, 8)), tol=1e-8, v0=start,
            maxiter=max_restarts, return_eigenvectors=False,
        )  # fmt: skip
    except ArpackNoConvergence:
        return float("nan")
    return float(np.max(values.real))


def theorem_conditions(block: ODEBlock) -> dict[str, Any]:
    """What SONet Theorem 3.1 assumes, and whether ``block`` (its field) has it."""
    fld = getattr(block, "field", None)
    skew = getattr(fld, "skew", None)
    gamma = getattr(fld, "gamma", None)
    activation = getattr(fld, "activation_name", None) or getattr(fld, "activation", None)
    activation = activation if isinstance(activation, str) else type(activation).__name__
    norms = sorted(
        {
            type(m).__name__
            for m in (fld.modules() if fld is not None else [])
            if isinstance(m, _NORMS)
        }
    )
    norm_name = getattr(fld, "norm_name", None) or (", ".join(norms) if norms else None)
    checks = {
        "skew_weights": skew is True,
        "positive_damping": isinstance(gamma, int | float) and gamma > 0,
        "increasing_activation": str(activation).lower() in STRICTLY_INCREASING,
        "no_normalisation": norm_name in (None, "none", "None"),
    }
    return {
        "skew": skew,
        "gamma": gamma,
        "activation": activation,
        "norm": norm_name,
        "checks": checks,
        "hold": all(checks.values()),
    }


@dataclass
class BlockStability:
    """One block's measurements over the images (see the module docstring)."""

    name: str
    solver: str
    conditions: dict[str, Any]
    max_real_eig_initial: list[float] = field(default_factory=list)
    max_real_eig_final: list[float] = field(default_factory=list)
    amplification: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def stats(values: list[float]) -> dict[str, float | None]:
            if not values:
                return {"max": None, "mean": None}
            return {"max": max(values), "mean": sum(values) / len(values)}

        return {
            "block": self.name,
            "solver": self.solver,
            "conditions": self.conditions,
            "max_real_eig_initial": stats(self.max_real_eig_initial),
            "max_real_eig_final": stats(self.max_real_eig_final),
            "amplification": stats(self.amplification),
            "images": len(self.amplification),
        }


def block_stability(
    model: nn.Module,
    x: torch.Tensor,
    *,
    krylov: int = 40,
    delta: float = 1e-3,
    directions: int = 2,
    seed: int = 0,
) -> list[BlockStability]:
    """:class:`BlockStability` of every ODE block of ``model`` at the images ``x``."""
    blocks = list(named_ode_blocks(model))
    if not blocks:
        raise InputError(
            f"the model ({type(model).__name__}) has no ODE blocks whose stability to measure"
        )
    results: dict[str, BlockStability] = {}
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for i in range(x.shape[0]):
            with torch.no_grad(), capture_solves(model) as solves:
                model(x[i : i + 1])
            for solve in solves:
                entry = results.setdefault(
                    solve.name,
                    BlockStability(
                        solve.name, solve.block.solver.describe(), theorem_conditions(solve.block)
                    ),
                )
                field64 = copy.deepcopy(solve.field).double()
                for state, target in (
                    (solve.initial, entry.max_real_eig_initial),
                    (solve.final, entry.max_real_eig_final),
                ):
                    apply, size = field_jacobian_operator(field64, state)
                    target.append(max_real_eigenvalue(apply, size, krylov=krylov, seed=seed))
                entry.amplification.append(
                    _amplification(solve, delta=delta, directions=directions, seed=seed + i)
                )
    finally:
        for module, flag in flags:
            module.training = flag
    return list(results.values())


@torch.no_grad()
def _amplification(solve: SolveCapture, *, delta: float, directions: int, seed: int) -> float:
    """The largest ‖B(u + δ) − B(u)‖ / ‖δ‖ over ``directions`` random δ, ‖δ‖ = delta·‖u‖."""
    u = solve.block_input
    generator = torch.Generator().manual_seed(seed)
    base = solve.block(u)
    worst = 0.0
    for _ in range(directions):
        d = torch.randn(u.shape, generator=generator, dtype=u.dtype)
        d = d * (delta * max(float(u.norm()), 1e-12) / float(d.norm()))
        moved = solve.block(u + d)
        worst = max(worst, float((moved - base).norm()) / float(d.norm()))
    return worst if math.isfinite(worst) else float("nan")


SPECTRUM_FILE = "spectrum.json"


def model_stability(
    model: nn.Module,
    x: torch.Tensor,
    *,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    meta: dict[str, Any] | None = None,
    krylov: int = 40,
    delta: float = 1e-3,
    seed: int = 0,
    progress: Any = None,
) -> dict[str, Any]:
    """:func:`block_stability` of ``model`` at the images ``x`` as a report (per block: the
    theorem's conditions, the largest real eigenvalue at t = 0 and t = t1, the
    amplification); with ``out_dir`` written there as ``spectrum.json`` through an
    :class:`~robustode.outputs.OutputFolder` (a report of another model, data or settings is
    refused unless ``overwrite``)."""
    from ..fingerprint import inputs_sha256, model_fingerprint, versions

    fingerprint = {
        "format": "robustode-spectrum-1",
        "model": model_fingerprint(model),
        "data": {"sha256": inputs_sha256(x, torch.zeros(x.shape[0], dtype=torch.long)),
                 "n": int(x.shape[0])},
        "settings": {"krylov": krylov, "delta": delta, "seed": seed,
                     "dense_limit": DENSE_LIMIT},
        "versions": versions(),
    }  # fmt: skip
    announce = progress or (lambda line: None)

    def measure() -> dict[str, Any]:
        import time

        started = time.perf_counter()
        announce(f"spectrum of every ODE block's field at {x.shape[0]} image(s) ...")
        blocks = block_stability(model, x, krylov=krylov, delta=delta, seed=seed)
        return {
            "fingerprint": fingerprint,
            "meta": meta or {},
            "blocks": [b.summary() for b in blocks],
            "seconds": time.perf_counter() - started,
        }

    if out_dir is None:
        return measure()
    from ..outputs import OutputFolder

    with OutputFolder(out_dir, "stability", overwrite=overwrite) as folder:
        folder.refuse_other_settings(SPECTRUM_FILE, fingerprint, what="a spectrum report")
        report = measure()
        folder.write_json(SPECTRUM_FILE, report)
    return report


def format_spectrum(report: dict[str, Any]) -> str:
    """The report as a Markdown table, a row per block."""

    def num(value: Any) -> str:
        return "–" if value is None else f"{value:.3g}"

    lines = [
        "| block | solver | theorem's conditions | max Re λ at t=0 | max Re λ at t1 | "
        "amplification (max) | images |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for b in report["blocks"]:
        c = b["conditions"]
        missing = [k.replace("_", " ") for k, ok in c["checks"].items() if not ok]
        held = "hold" if c["hold"] else "not: " + ", ".join(missing)
        lines.append(
            f"| {b['block']} | {b['solver']} | {held} | {num(b['max_real_eig_initial']['max'])} "
            f"| {num(b['max_real_eig_final']['max'])} | {num(b['amplification']['max'])} "
            f"| {b['images']} |"
        )
    return "\n".join(lines)


__all__ = [
    "SPECTRUM_FILE",
    "BlockStability",
    "block_stability",
    "capture_solves",
    "field_jacobian_operator",
    "format_spectrum",
    "max_real_eigenvalue",
    "model_stability",
    "theorem_conditions",
]
