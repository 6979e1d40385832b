"""The ODE options a model hands to every one of its ODE blocks.

``create_model`` takes them flat (``method="rk4", step_size=0.25, gamma=0.1``);
this module sorts them into the solver (a :class:`SolverConfig`) and the
skew blocks' own settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..ode import SolverConfig

SOLVER_OPTIONS = (
    "method",
    "tol",
    "rtol",
    "atol",
    "step_size",
    "step_control",
    "detach_step_size",
    "adjoint",
    "t1",
    "max_num_steps",
    "backend",
    "step_semantics",
)
SKEW_OPTIONS = ("gamma", "z0", "activation", "norm")
CLASSIFIER_OPTIONS = ("classifier_z0", "activation_placement")


def solver_config(options: dict[str, Any]) -> SolverConfig:
    """The solver from the solver options present in ``options`` (defaults: dopri5, tol 0.1)."""
    return SolverConfig.create(**{k: v for k, v in options.items() if k in SOLVER_OPTIONS})


@dataclass(frozen=True)
class SkewBlockOptions:
    """Settings of the convolutional skew blocks (SONet eq. 3; defaults: the reference code)."""

    gamma: float = 0.0
    z0: str = "channel_copy"
    activation: str = "leaky_relu"
    norm: str | None = "group"

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SkewBlockOptions:
        return cls(**{k: v for k, v in options.items() if k in SKEW_OPTIONS})

    def conv_kwargs(self, solver: SolverConfig) -> dict[str, Any]:
        """Keyword arguments for :class:`~robustode.nn.SkewConvODE`."""
        return dict(
            gamma=self.gamma, z0=self.z0, activation=self.activation, norm=self.norm, solver=solver
        )

    def linear_kwargs(self, options: dict[str, Any], solver: SolverConfig) -> dict[str, Any]:
        """Keyword arguments for the classifier :class:`~robustode.nn.SkewLinearODE`."""
        return dict(
            gamma=self.gamma,
            activation=self.activation,
            placement=options.get("activation_placement", "before"),
            z0=options.get("classifier_z0", 0.1),
            solver=solver,
        )
