"""``RobustModel``: what every robustode model offers beyond ``nn.Module``.

- ``ode_blocks()`` / ``named_ode_blocks()``: the ODE blocks, to read each
  one's step record and NFE or swap its solver (``set_solver``);
- ``perturbation_points()`` / ``perturbed(fn)``: the named hidden-layer
  outputs LAD and noise injection act on (:mod:`robustode.nn.perturbation`);
- ``model_config``: the name and options ``create_model`` built it from, so a
  checkpoint can rebuild it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from torch import nn

from ..errors import InputError
from ..nn import ODEBlock
from ..nn.ode_block import named_ode_blocks
from ..nn.perturbation import PerturbationFn, perturbation_points, perturbed


class RobustModel(nn.Module):
    """Base of the registry's models: images in [0, 1] (NCHW) → logits."""

    model_config: dict[str, Any]

    def __init__(self) -> None:
        super().__init__()
        self.model_config = {}

    # ------------------------------------------------------------ construction
    def add_stages(
        self,
        stages: Sequence[tuple[int, int]],
        blocks_per_stage: int,
        in_channels: int,
        make_block: Callable[[int, int, int, int, str], nn.Module],
    ) -> int:
        """Add ``layer1``, ``layer2``, … as ``nn.Sequential`` stages; return the final width.

        ``stages`` holds (width, stride of the stage's first block) per stage;
        ``make_block(in_channels, out_channels, stride, index_in_stage, name)``
        builds one block, ``name`` being its module path (``layer2.0``) — the
        name of the perturbation point at its output.
        """
        if blocks_per_stage < 1:
            raise InputError(f"blocks per stage must be ≥ 1, got {blocks_per_stage}")
        channels = in_channels
        for stage, (width, stride) in enumerate(stages, start=1):
            blocks = []
            for index in range(blocks_per_stage):
                name = f"layer{stage}.{index}"
                blocks.append(make_block(channels, width, stride if index == 0 else 1, index, name))
                channels = width
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        return channels

    # ------------------------------------------------------------ ODE blocks
    def named_ode_blocks(self) -> Iterator[tuple[str, ODEBlock]]:
        """(module path, block) for every ODE block, in forward order."""
        yield from named_ode_blocks(self)

    def ode_blocks(self) -> Iterator[ODEBlock]:
        """Every ODE block, in forward order (none for a plain ResNet)."""
        for _, block in self.named_ode_blocks():
            yield block

    def set_solver(self, **changes: Any) -> None:
        """Change every ODE block's solver, e.g. ``set_solver(method="rk4", step_size=0.25)``."""
        blocks = list(self.ode_blocks())
        if not blocks:
            raise InputError(f"{type(self).__name__} has no ODE blocks; it has no solver to set")
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
