"""Evaluation: attack suites over a test split, reports and plots, the step-grid study and the
gradient-masking audit (``robustode evaluate | steps | audit``)."""

from .steps import StepStudy, format_table, pgd_trajectory, step_study
from .target import Target, load_target

__all__ = ["StepStudy", "Target", "format_table", "load_target", "pgd_trajectory", "step_study"]
