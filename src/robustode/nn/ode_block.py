"""``ODEBlock``: the base of every layer that integrates an ODE.

It owns a :class:`~robustode.ode.SolverConfig` and the :class:`StepRecord` of
its latest forward pass, so callers read step grids and NFE from the block
(``block.last_record``) instead of hooking into the solver.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from ..ode import SolverConfig, StepRecord


class ODEBlock(nn.Module):
    """A module that integrates a vector field over [0, solver.t1]."""

    def __init__(self, solver: SolverConfig | None = None, **solver_options) -> None:
        super().__init__()
        self.solver = SolverConfig.create(solver, **solver_options)
        self.last_record: StepRecord | None = None

    def integrate(self, field: nn.Module, state):
        """Solve from ``state`` at t = 0 and return the state at t1, recording the solve."""
        record = StepRecord()
        out = self.solver.solve(field, state, record)
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
