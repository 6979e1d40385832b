"""Evaluation: attack suites over a test split, reports and plots, the step-grid study and the
gradient-masking audit (``robustode evaluate | steps | audit``)."""

from .target import Target, load_target

__all__ = ["Target", "load_target"]
