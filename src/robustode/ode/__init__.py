"""robustode's ODE engine: torchdiffeq 0.2.5's public API (``odeint``,
``odeint_adjoint``, ``odeint_event``, ``odeint_dense``) with step semantics we control (batch or
per-sample step control, detachable step sizes, step records, adjoint
gradients, a torchdiffeq reference backend)."""

from .adjoint import odeint_adjoint
from .config import SolverConfig
from .dense import odeint_dense
from .errors import SolverError
from .events import odeint_event
from .odeint import BACKENDS, METHODS, STEP_CONTROLS, STEP_SEMANTICS, odeint
from .record import StepRecord
from .tableau import ADAMS_METHODS, ADAPTIVE_METHODS, FIXED_METHODS, TABLEAUS, ButcherTableau

__all__ = [
    "ADAMS_METHODS",
    "ADAPTIVE_METHODS",
    "BACKENDS",
    "FIXED_METHODS",
    "METHODS",
    "STEP_CONTROLS",
    "STEP_SEMANTICS",
    "TABLEAUS",
    "ButcherTableau",
    "SolverConfig",
    "SolverError",
    "StepRecord",
    "odeint",
    "odeint_adjoint",
    "odeint_dense",
    "odeint_event",
]
