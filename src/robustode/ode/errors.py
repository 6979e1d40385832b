"""Errors the ODE engine raises, each naming what went wrong and where."""

from __future__ import annotations

from ..errors import RobustodeError


class SolverError(RobustodeError, RuntimeError):
    """The solver could not finish: step budget exceeded, step-size underflow,
    or non-finite values in the state. The message names the method, the
    tolerances and the time reached."""
