"""The masking zoo's constructions for the tests: one copy, in :mod:`benchmarks.masking_zoo`
(small honest and masked networks on scikit-learn's digits, each with its ground truth and
the attack that proves it)."""

from __future__ import annotations

from benchmarks.masking_zoo import (
    BPDAMedian,
    GaussianInputNoise,
    NoisySine,
    Saturated,
    ShuffledGradient,
    StraightThroughQuantiser,
    digits_cnn,
    digits_test,
    median3x3,
)

__all__ = [
    "BPDAMedian",
    "GaussianInputNoise",
    "NoisySine",
    "Saturated",
    "ShuffledGradient",
    "StraightThroughQuantiser",
    "digits_cnn",
    "digits_test",
    "median3x3",
]
