"""Evaluation: attack suites over a test split, reports and plots, the step-grid study and the
gradient-masking audit (``robustode evaluate | steps | audit``)."""

from .steps import StepStudy, pgd_trajectory, step_study
from .steps import format_table as format_steps_table
from .target import Target, load_target

__all__ = [
    "StepStudy",
    "Target",
    "format_steps_table",
    "load_target",
    "pgd_trajectory",
    "step_study",
]
