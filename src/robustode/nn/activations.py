"""Activations an ODE block may use, by name.

Theorem 3.1 of the SONet paper needs σ′ > 0 everywhere: ``leaky_relu``
(slope 0.01, the reference code's choice) and ``tanh`` qualify; ``identity``
gives the linearised block of eq. (4); ``relu`` is accepted for ablations but
falls outside the theorem.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


# Named functions, not lambdas, so models holding them can be pickled.
def leaky_relu(v: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(v, 0.01)


def identity(v: torch.Tensor) -> torch.Tensor:
    return v


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "leaky_relu": leaky_relu,
    "tanh": torch.tanh,
    "identity": identity,
    "relu": F.relu,
}


# In-place forms for the fast fields, which apply σ to a fresh convolution output
# that nothing else reads: one pass over memory and no new tensor. Each one's
# backward reads its output, not its input (σ′ > 0 is a function of σ for all four).
def leaky_relu_(v: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(v, 0.01, inplace=True)


def tanh_(v: torch.Tensor) -> torch.Tensor:
    return v.tanh_()


def relu_(v: torch.Tensor) -> torch.Tensor:
    return F.relu(v, inplace=True)


ACTIVATIONS_INPLACE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "leaky_relu": leaky_relu_,
    "tanh": tanh_,
    "identity": identity,
    "relu": relu_,
}


def get_activation(name: str, inplace: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """σ by name; ``inplace=True`` gives the form that overwrites its argument."""
    try:
        return (ACTIVATIONS_INPLACE if inplace else ACTIVATIONS)[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}"
        ) from None
