"""``ODEBlock``: the base of every layer that integrates an ODE.

It owns a :class:`~robustode.ode.SolverConfig` and the :class:`StepRecord` of
its latest forward pass, so callers read step grids and NFE from the block
(``block.last_record``) instead of hooking into the solver. A solve that
fails (step budget exceeded, step size underflowed, non-finite state) raises
:class:`~robustode.ode.SolverError` naming the block — its module path in the
model, which :func:`name_ode_blocks` tells it — as well as the method and the
tolerances.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from ..ode import SolverConfig, SolverError, StepRecord


class ODEBlock(nn.Module):
    """A module that integrates a vector field over [0, solver.t1]."""

    def __init__(self, solver: SolverConfig | None = None, **solver_options) -> None:
        super().__init__()
        self.solver = SolverConfig.create(solver, **solver_options)
        self.last_record: StepRecord | None = None
        self.module_path: str | None = None  # set by name_ode_blocks; named in solver errors

    def integrate(self, field: nn.Module, state):
        """Solve from ``state`` at t = 0 and return the state at t1, recording the solve."""
        record = StepRecord()
        try:
            out = self.solver.solve(field, state, record)
        except SolverError as exc:
            if getattr(exc, "block", None) is not None:  # an inner block has named itself
                raise
            name = self.module_path or type(self).__name__
            error = SolverError(f"ODE block '{name}': {exc}")
            error.block = name
            raise error from exc
        self.last_record = record
        return out

    @property
    def nfe(self) -> int:
        """Forward function evaluations of the latest pass (0 before any)."""
        return 0 if self.last_record is None else self.last_record.nfe_forward

    def extra_repr(self) -> str:
        return f"solver={self.solver.describe()}"


def named_ode_blocks(model: nn.Module) -> Iterator[tuple[str, ODEBlock]]:
    """(module path, block) for every ODE block of any module, in forward (module) order."""
    for name, module in model.named_modules():
        if isinstance(module, ODEBlock):
            yield name, module


def name_ode_blocks(model: nn.Module) -> None:
    """Tell every ODE block of ``model`` its module path (``stem.block``), which its solver
    errors then name; ``create_model`` does this for every model it builds."""
    for name, block in named_ode_blocks(model):
        block.module_path = name or type(block).__name__
