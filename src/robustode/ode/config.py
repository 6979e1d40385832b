"""``SolverConfig``: how an ODE block integrates — one validated, immutable value.

Blocks and models carry one of these, so swapping the solver of a deployed
model (the gradient-masking audit's first move) is ``block.solver =
block.solver.replace(method="rk4")``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

from .adjoint import odeint_adjoint
from .odeint import BACKENDS, METHODS, STEP_CONTROLS, odeint
from .record import StepRecord
from .semantics2019 import DEFAULT_SEMANTICS, LEGACY_SEMANTICS, check_step_semantics
from .tableau import ADAPTIVE_METHODS, FIXED_METHODS


@dataclass(frozen=True)
class SolverConfig:
    """Solver settings of an ODE block (defaults: the SONet reference code's dopri5, tol 0.1).

    ``step_size`` applies to the fixed-step methods; None integrates [0, t1] in
    one step, as torchdiffeq does without a step size.
    """

    method: str = "dopri5"
    rtol: float = 0.1
    atol: float = 0.1
    step_size: float | None = None
    step_control: str = "batch"
    detach_step_size: bool | None = None
    adjoint: bool = False
    t1: float = 1.0
    max_num_steps: int = 10_000
    backend: str = "native"
    step_semantics: str = DEFAULT_SEMANTICS

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"unknown ODE method '{self.method}'; choose one of: {', '.join(METHODS)}"
            )
        if self.step_control not in STEP_CONTROLS:
            raise ValueError(
                f"unknown step_control '{self.step_control}'; choose one of: "
                f"{', '.join(STEP_CONTROLS)}"
            )
        if self.backend not in BACKENDS:
            raise ValueError(
                f"unknown backend '{self.backend}'; choose one of: {', '.join(BACKENDS)}"
            )
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.step_size is not None and not (
            math.isfinite(self.step_size) and self.step_size > 0
        ):
            raise ValueError(f"step_size must be a positive number, got {self.step_size!r}")
        if not (math.isfinite(self.t1) and self.t1 > 0):
            raise ValueError(f"t1 (integration time) must be positive, got {self.t1!r}")
        if int(self.max_num_steps) < 1:
            raise ValueError(f"max_num_steps must be ≥ 1, got {self.max_num_steps!r}")
        if self.detach_step_size not in (None, True, False):
            raise ValueError("detach_step_size must be None, True or False")
        check_step_semantics(self.step_semantics, self.method)
        if self.step_semantics == LEGACY_SEMANTICS and self.adaptive:
            clashes = [
                name
                for name, present in (
                    ("adjoint=True", self.adjoint),
                    ("backend='torchdiffeq'", self.backend != "native"),
                    ("step_control='per_sample'", self.step_control != "batch"),
                )
                if present
            ]
            if clashes:
                raise ValueError(
                    f"step_semantics='{LEGACY_SEMANTICS}' cannot be combined with "
                    f"{', '.join(clashes)}: it reproduces that torchdiffeq's batch-shared "
                    "backprop solve natively"
                )
        # Options a solve would silently ignore are refused instead.
        if self.adaptive and self.step_size is not None:
            raise ValueError(
                f"step_size is for the fixed-step methods ({', '.join(FIXED_METHODS)}); "
                f"{self.method} chooses its own steps: pass step_size=None and set tol"
            )
        if self.step_control == "per_sample" and self.method in ("implicit_adams", "fixed_adams"):
            raise ValueError(
                f"method '{self.method}' cannot be combined with step_control='per_sample': its "
                "corrector's convergence test spans the batch; explicit_adams or "
                "step_control='batch'"
            )
        if self.backend == "torchdiffeq" and (
            self.step_control != "batch" or self.detach_step_size is not None
        ):
            raise ValueError(
                "backend 'torchdiffeq' has only torchdiffeq's batch-shared step control; "
                "step_control='per_sample' and detach_step_size need backend='native'"
            )

    @classmethod
    def create(
        cls, base: SolverConfig | None = None, *, tol: float | None = None, **changes
    ) -> SolverConfig:
        """Build from a base config and keyword changes; ``tol`` sets rtol = atol."""
        if tol is not None:
            changes.setdefault("rtol", tol)
            changes.setdefault("atol", tol)
        unknown = set(changes) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown solver option(s) {sorted(unknown)}; accepted: "
                f"{sorted([*cls.__dataclass_fields__, 'tol'])}"
            )
        return replace(base or cls(), **changes)

    def replace(self, **changes) -> SolverConfig:
        return SolverConfig.create(self, **changes)

    @property
    def adaptive(self) -> bool:
        return self.method in ADAPTIVE_METHODS

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.adaptive:
            legacy = ", torchdiffeq-2019 steps" if self.step_semantics == LEGACY_SEMANTICS else ""
            return (
                f"{self.method} (rtol={self.rtol:g}, atol={self.atol:g}, {self.step_control}"
                f"{legacy})"
            )
        step = "one step" if self.step_size is None else f"step {self.step_size:g}"
        return f"{self.method} ({step})"

    def solve(self, func, y0, record: StepRecord | None = None):
        """Integrate ``func`` from 0 to t1 and return the final state (tensor or tuple)."""
        # Time stays on the host: the engine reads it there, so no device round trip.
        t = torch.tensor([0.0, self.t1], dtype=torch.float64)
        options: dict = {"max_num_steps": self.max_num_steps}
        if not self.adaptive and self.step_size is not None:
            options["step_size"] = self.step_size
        kwargs = dict(
            rtol=self.rtol,
            atol=self.atol,
            method=self.method,
            options=options,
            record=record,
            backend=self.backend,
        )
        if self.backend == "native":
            kwargs.update(step_control=self.step_control, detach_step_size=self.detach_step_size)
        if self.step_semantics != DEFAULT_SEMANTICS:
            kwargs.update(step_semantics=self.step_semantics)
        solve = odeint_adjoint if self.adjoint else odeint
        out = solve(func, y0, t, **kwargs)
        return tuple(_last(o) for o in out) if isinstance(out, tuple) else _last(out)


def _last(solution: torch.Tensor) -> torch.Tensor:
    """``solution[-1]``, with a gradient in the solution's memory layout."""
    return _Last.apply(solution)


class _Last(torch.autograd.Function):
    """Indexing's backward writes the gradient into a new *contiguous* tensor, so a
    state kept in channels-last (the fast ODE fields, nn/layout.py) would enter its
    solve's backward pass as an NCHW gradient, and every operation of that pass —
    the stages' sums, GroupNorm, the convolutions — would mix layouts or copy. This
    backward writes it into a zero tensor with the solution's own strides."""

    @staticmethod
    def forward(ctx, solution: torch.Tensor) -> torch.Tensor:
        ctx.size, ctx.stride = solution.size(), solution.stride()
        return solution[-1].clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        full = torch.empty_strided(ctx.size, ctx.stride, dtype=grad.dtype, device=grad.device)
        full.zero_()[-1].copy_(grad)
        return full
