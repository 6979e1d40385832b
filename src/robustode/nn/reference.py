"""Switch a model's vector fields between their fast and reference implementations.

Both compute the same function (:mod:`.skew`, :mod:`.neural_ode`); the
reference one is the plain composition of PyTorch modules the fast one is
tested and benchmarked against (tests/test_fast_fields.py,
benchmarks/bench_fields.py).
"""

from __future__ import annotations

from torch import nn

from .neural_ode import NeuralODEField
from .skew import SkewConvField, SkewLinearField

FIELDS = (SkewConvField, SkewLinearField, NeuralODEField)


def set_reference_fields(model: nn.Module, reference: bool = True) -> int:
    """Make every vector field in ``model`` use its reference (or, with False, its fast)
    implementation; return how many fields there were."""
    count = 0
    for module in model.modules():
        if isinstance(module, FIELDS):
            module.reference = reference
            count += 1
    return count
