"""Evaluation: attack suites over a test split, reports and plots, the step-grid study and the
gradient-masking audit (``robustode evaluate | steps | audit``)."""

from .report import report_markdown, results_table, strip_timings
from .runner import EvaluationResult, PointResults, run_evaluation
from .suites import SUITES, AttackSpec, parse_spec, register_suite, resolve_attacks
from .target import Target, load_target

__all__ = ["Target", "load_target"]
__all__ += ["EvaluationResult", "PointResults", "run_evaluation"]
__all__ += ["SUITES", "AttackSpec", "parse_spec", "register_suite", "resolve_attacks"]
__all__ += ["report_markdown", "results_table", "strip_timings"]
