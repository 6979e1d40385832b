"""Evaluation: attack suites over a test split, reports and plots, the step-grid study and the
gradient-masking audit (``robustode evaluate | steps | audit``)."""

from .audit import AuditReport, audit, write_audit
from .audit_checks import CheckResult, paired_margin
from .target import Target, load_target

__all__ = [
    "AuditReport",
    "CheckResult",
    "Target",
    "audit",
    "load_target",
    "paired_margin",
    "write_audit",
]
