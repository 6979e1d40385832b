"""robustode's ODE engine: torchdiffeq-compatible ``odeint`` with step semantics
we control (batch or per-sample step control, detachable step sizes, step
records, adjoint gradients, a torchdiffeq reference backend)."""

from .adjoint import odeint_adjoint
from .config import SolverConfig
from .errors import SolverError
from .odeint import BACKENDS, METHODS, STEP_CONTROLS, odeint
from .record import StepRecord
from .tableau import ADAPTIVE_METHODS, FIXED_METHODS, TABLEAUS, ButcherTableau

__all__ = [
    "ADAPTIVE_METHODS",
    "BACKENDS",
    "FIXED_METHODS",
    "METHODS",
    "STEP_CONTROLS",
    "TABLEAUS",
    "ButcherTableau",
    "SolverConfig",
    "SolverError",
    "StepRecord",
    "odeint",
    "odeint_adjoint",
]
