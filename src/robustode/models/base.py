"""``RobustModel``: what every robustode model offers beyond ``nn.Module``.

- ``ode_blocks()`` / ``named_ode_blocks()``: the ODE blocks, to read each
  one's step record and NFE or swap its solver (``set_solver``);
- ``perturbation_points()`` / ``perturbed(fn)``: the named hidden-layer
  outputs LAD and noise injection act on (:mod:`robustode.nn.perturbation`);
- ``model_config``: the name and options ``create_model`` built it from, so a
  checkpoint can rebuild it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from torch import nn

from ..nn import ODEBlock
from ..nn.perturbation import PerturbationFn, perturbation_points, perturbed


class RobustModel(nn.Module):
    """Base of the registry's models: images in [0, 1] (NCHW) → logits."""

    model_config: dict[str, Any]

    def __init__(self) -> None:
        super().__init__()
        self.model_config = {}

    # ------------------------------------------------------------ ODE blocks
    def named_ode_blocks(self) -> Iterator[tuple[str, ODEBlock]]:
        """(module path, block) for every ODE block, in forward order."""
        for name, module in self.named_modules():
            if isinstance(module, ODEBlock):
                yield name, module

    def ode_blocks(self) -> Iterator[ODEBlock]:
        """Every ODE block, in forward order (none for a plain ResNet)."""
        for _, block in self.named_ode_blocks():
            yield block

    def set_solver(self, **changes: Any) -> None:
        """Change every ODE block's solver, e.g. ``set_solver(method="rk4", step_size=0.25)``."""
        blocks = list(self.ode_blocks())
        if not blocks:
            raise ValueError(f"{type(self).__name__} has no ODE blocks; it has no solver to set")
        solvers = [block.solver.replace(**changes) for block in blocks]  # validate all first
        for block, solver in zip(blocks, solvers, strict=True):
            block.solver = solver
        # keep model_config able to rebuild what now runs
        if "tol" in changes:
            changes = {"rtol": changes["tol"], "atol": changes["tol"], **changes}
            self.model_config.pop("tol", None)
        self.model_config.update({k: v for k, v in changes.items() if k != "tol"})

    @property
    def nfe(self) -> int:
        """Forward function evaluations of all ODE blocks in the latest forward pass."""
        return sum(block.nfe for block in self.ode_blocks())

    # --------------------------------------------------- perturbation points
    def perturbation_points(self) -> list[str]:
        """Names of the hidden-layer outputs LAD and noise injection perturb, in forward order."""
        return perturbation_points(self)

    def perturbed(self, fn: PerturbationFn) -> AbstractContextManager[None]:
        """Context in which every perturbation point's output ``h`` becomes ``fn(name, h)``."""
        return perturbed(self, fn)
