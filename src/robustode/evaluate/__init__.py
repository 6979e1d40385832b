"""Evaluation: attack suites over a test split, reports and plots, the step-grid study and the
gradient-masking audit (``robustode evaluate | steps | audit``)."""

from .audit import AuditReport, audit, write_audit
from .audit_checks import CheckResult, paired_margin
from .report import report_markdown, results_table, strip_timings
from .runner import EvaluationResult, PointResults, run_evaluation
from .steps import StepStudy, pgd_trajectory, step_study
from .steps import format_table as format_steps_table
from .suites import SUITES, AttackSpec, parse_spec, register_suite, resolve_attacks
from .target import Target, load_target

__all__ = [
    "SUITES",
    "AttackSpec",
    "AuditReport",
    "CheckResult",
    "EvaluationResult",
    "PointResults",
    "StepStudy",
    "Target",
    "audit",
    "format_steps_table",
    "load_target",
    "paired_margin",
    "parse_spec",
    "pgd_trajectory",
    "register_suite",
    "report_markdown",
    "resolve_attacks",
    "results_table",
    "run_evaluation",
    "step_study",
    "strip_timings",
    "write_audit",
]
