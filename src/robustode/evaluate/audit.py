"""``robustode audit``: is a model's robustness real, or does it come from gradient masking?

SONet §6 found by hand that its PGD robustness came from adaptive ODE solvers masking the
gradient. :func:`audit` runs the checks of Carlini et al. 2019 ("On evaluating adversarial
robustness") and Pintor et al. 2022 ("Indicators of attack failure") plus ODE-specific
ones, and returns an :class:`AuditReport` whose verdict is

- ``masked`` if any failed check has severity ``masked``,
- ``suspicious`` if any failed check has severity ``suspicious``,
- ``no masking detected`` otherwise,

with every check's status, evidence and message. A check has severity ``masked`` only when
its failure shows the robust accuracy is inflated — an attack beats the white-box number
significantly, or a sanity bound fails; diagnostic signals have severity ``suspicious``.
Every decision is taken on integer counts: robust accuracies of two attacks on the same
points are compared with the exact paired (McNemar) test of
:func:`~robustode.evaluate.audit_checks.paired_test`, rates against thresholds exactly.
docs/audit.md has the rule table, every check, its threshold, and how to add one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import APGDT, FGSM, PGD, SPSA, AttackError, CWMarginPGD, Square
from ..attacks.adaptive import (
    SolverSubstitution,
    ode_blocks,
    solvers_replaced,
    substitute_solver,
)
from ..attacks.base import AttackResult, model_mode
from ..attacks.eot import RandomnessCheck, check_randomness
from ..errors import InputError
from ..fingerprint import inputs_sha256, model_fingerprint, versions
from ..nn.solve_sites import discover_sites, intercepting
from ..ode import SolverError
from ..outputs import OutputFolder
from . import audit_checks as ac
from .audit_checks import (
    CheckResult,
    compare,
    failed,
    outcome,
    pair_evidence,
    pair_words,
    passed,
    rate_at_most,
    skipped,
)
from .inputs import check_inputs_fit_model

AUDIT_FILE = "audit.json"
VERDICTS = ("no masking detected", "suspicious", "masked")
FAIL_ON = ("masked", "suspicious", "never")


@dataclass(frozen=True)
class AuditLevel:
    """Budgets of one audit level (``quick`` is sized for CI tests)."""

    n: int
    pgd_steps: int  # K of the convergence run (no random start, step ε/10)
    restarts: int  # R random-start PGD runs compared with the first alone
    restart_steps: int
    growth_steps: int  # PGD steps at each ε of the ε-growth curve
    unbounded_steps: int  # PGD steps of the ε = 1 attack
    square_queries: int
    spsa_iterations: int
    spsa_samples: int
    substitutes: tuple[str, ...]
    substitute_steps: int
    transfer_steps: int
    fd_points: int
    fd_directions: int
    batch_points: int
    noise_draws: int
    # last, with a default, so levels built by position before it existed still work
    apgd_targets: int = 9  # APGD-T's target classes (restart_steps iterations each)
    eot_iter: int = 20  # passes each gradient averages on a randomised model (EOT)


LEVELS: dict[str, AuditLevel] = {
    "quick": AuditLevel(
        n=100, pgd_steps=100, restarts=3, restart_steps=20, apgd_targets=3, growth_steps=10,
        unbounded_steps=50, square_queries=200, spsa_iterations=10, spsa_samples=16,
        substitutes=("fixed", "per_sample"), substitute_steps=20, transfer_steps=20,
        fd_points=16, fd_directions=8, batch_points=8, noise_draws=2, eot_iter=8,
    ),
    "standard": AuditLevel(
        n=500, pgd_steps=200, restarts=5, restart_steps=50, apgd_targets=9, growth_steps=20,
        unbounded_steps=100, square_queries=1000, spsa_iterations=20, spsa_samples=32,
        substitutes=("fixed", "per_sample"), substitute_steps=50, transfer_steps=50,
        fd_points=32, fd_directions=16, batch_points=16, noise_draws=4,
    ),
    "thorough": AuditLevel(
        n=1000, pgd_steps=1000, restarts=10, restart_steps=100, apgd_targets=9, growth_steps=50,
        unbounded_steps=200, square_queries=5000, spsa_iterations=50, spsa_samples=64,
        substitutes=("fixed", "per_sample", "tight"), substitute_steps=200, transfer_steps=100,
        fd_points=64, fd_directions=32, batch_points=32, noise_draws=8,
    ),
}  # fmt: skip

EPS_MULTIPLIERS = (1, 2, 4, 8, 16)
UNBOUNDED_STEP = 0.05


@dataclass
class AuditReport:
    """The verdict, every check's result, and what was audited."""

    verdict: str
    checks: list[CheckResult]
    eps: float
    n: int
    level: str
    seconds: float
    clean_accuracy: float = math.nan
    info: dict[str, Any] = field(default_factory=dict)
    # e.g. too few clean-correct points to decide anything
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.failed]

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named '{name}'")

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "failed": [c.name for c in self.failed],
            "eps": self.eps,
            "n": self.n,
            "level": self.level,
            "seconds": self.seconds,
            "clean_accuracy": self.clean_accuracy,
            "warnings": self.warnings,
            "info": self.info,
            "checks": [c.to_dict() for c in self.checks],
        }

    def table(self) -> str:
        rows = ["| check | status | evidence | → |", "|---|---|---|---|"]
        for c in self.checks:
            arrow = c.severity if c.failed else ("ok" if c.status == "pass" else "–")
            shown = format_evidence(c.evidence) if c.status != "skipped" else c.message
            rows.append(f"| {c.name} | {c.status} | {shown} | {arrow} |")
        return "\n".join(rows)

    def verdict_line(self) -> str:
        names = ", ".join(c.name for c in self.failed)
        line = f"verdict: {self.verdict}" + (f" (failed: {names})" if names else "")
        return line + "".join(f"\nwarning: {w}" for w in self.warnings)

    def to_markdown(self) -> str:
        lines = [
            "# Gradient-masking audit",
            "",
            f"**{self.verdict_line()}**",
            "",
            f"level {self.level}, ε = {self.eps:.5g} ({self.eps * 255:.3g}/255), "
            f"n = {self.n}, clean accuracy {self.clean_accuracy:.1%}, {self.seconds:.1f} s",
            "",
            self.table(),
            "",
            *(f"**warning**: {w}\n" for w in self.warnings),
            "## Messages",
            "",
        ]
        lines += [f"- **{c.name}** ({c.status}): {c.message}" for c in self.checks]
        return "\n".join(lines) + "\n"


def format_evidence(evidence: dict[str, Any], limit: int = 6) -> str:
    """A compact one-cell rendering of a check's evidence."""
    parts = []
    for key, value in list(evidence.items())[:limit]:
        parts.append(f"{key}={_short(value)}")
    return ", ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return "{" + " ".join(f"{k}:{_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + " ".join(_short(v) for v in value) + "]"
    return str(value)


def verdict_of(checks: list[CheckResult]) -> str:
    severities = {c.severity for c in checks if c.failed}
    if "masked" in severities:
        return "masked"
    if "suspicious" in severities:
        return "suspicious"
    return "no masking detected"


def fails_on(verdict: str, fail_on: str) -> bool:
    """Whether ``verdict`` is at least ``fail_on`` (masked > suspicious; never: never)."""
    if fail_on not in FAIL_ON:
        raise InputError(f"fail_on must be one of {', '.join(FAIL_ON)}, got '{fail_on}'")
    if fail_on == "never":
        return False
    return VERDICTS.index(verdict) >= VERDICTS.index(fail_on)


def write_audit(
    report: AuditReport, out_dir: str | Path | OutputFolder, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``audit.json`` and ``audit.md`` into ``out_dir`` (atomically, through its
    :class:`~robustode.outputs.OutputFolder`, claimed here unless the caller holds it);
    return both paths."""
    if isinstance(out_dir, OutputFolder):
        return out_dir.write_json(AUDIT_FILE, report.to_dict()), out_dir.write_text(
            "audit.md", report.to_markdown()
        )
    with OutputFolder(out_dir, "audit", overwrite=overwrite) as folder:
        fingerprint = report.info.get("fingerprint")
        if fingerprint is not None:
            folder.refuse_other_settings(
                AUDIT_FILE, fingerprint, what="an audit", key=("info", "fingerprint")
            )
        return write_audit(report, folder)


def audit_fingerprint(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    level: str,
    seed: int,
    batch_size: int | None,
    surrogate: nn.Module | None,
) -> dict[str, Any]:
    """What an audit's verdict depends on, read from the model, the points and the settings."""
    return {
        "format": "robustode-audit-1",
        "model": model_fingerprint(model),
        "data": {"sha256": inputs_sha256(x, y), "n": int(x.shape[0])},
        "settings": {"eps": float(eps), "level": level, "seed": int(seed),
                     "batch_size": batch_size},
        "surrogate": None if surrogate is None else model_fingerprint(surrogate),
        "versions": versions(),
    }  # fmt: skip


# ------------------------------------------------------------------ the audit
class _Audit:
    """One audit's state: the model, points, budgets, and the attack results checks share."""

    def __init__(self, model, x, y, eps, level, surrogate, seed, batch_size, progress):
        self.model, self.x, self.y, self.eps = model, x, y, eps
        self.level, self.cfg = level, LEVELS[level]
        self.surrogate, self.seed, self.batch_size = surrogate, seed, batch_size
        self.progress = progress or (lambda message: None)
        self.blocks = ode_blocks(model)
        self.white_box: dict[str, torch.Tensor] = {}  # attack name → per-point robust
        self.pgd: AttackResult | None = None
        self.batch_check: CheckResult | None = None  # batch_composition, once it has run
        # set before any check: on a randomised model every gradient attack averages its
        # gradients over cfg.eot_iter passes and the determinism checks are skipped
        self.randomness: RandomnessCheck | None = None

    @property
    def random(self) -> bool:
        return self.randomness is not None and self.randomness.random

    # ---------------------------------------------------------- helpers
    def run(self, attack, model=None, trace=False, eot=True) -> AttackResult:
        """Run ``attack`` on the audit's points; on a randomised model a gradient attack
        averages each gradient over ``cfg.eot_iter`` passes (EOT) unless ``eot=False`` (the
        single-pass comparison, and a surrogate, whose randomness the check did not see)."""
        inner = attack.attack if isinstance(attack, SolverSubstitution) else attack
        attack.batch_size = inner.batch_size = self.batch_size
        if self.random and eot and hasattr(inner, "eot_iter"):
            inner.eot_iter = self.cfg.eot_iter
        return attack.run(self.model if model is None else model, self.x, self.y, trace=trace)

    def deterministic_only(self, name: str, group: str, severity: str, why: str, fn):
        """``fn``'s check, or on a randomised model the check skipped with the reason."""
        if self.random:
            return skipped(name, group, severity, f"randomised model: {why}")  # type: ignore[arg-type]
        return fn()

    def strongest_white_box(self) -> torch.Tensor:
        robust = torch.ones_like(self.y, dtype=torch.bool)
        for r in self.white_box.values():
            robust &= r
        return robust

    def pgd_at(self, k: int) -> torch.Tensor:
        """Per-point robustness under PGD-k from the one no-random-start PGD-K run.

        A point is robust at k if no iterate up to k was adversarial when the attack
        evaluated it, or if the point PGD-K returned is not adversarial on re-evaluation:
        with batch-dependent outputs (batch-shared ODE step control, as the attack's batch
        shrinks) the two disagree, and the returned, re-evaluated point is what counts.
        At k = K this is the run's own robust accuracy.
        """
        assert self.pgd is not None and self.pgd.first_adversarial is not None
        first = self.pgd.first_adversarial
        found = self.pgd.clean_correct & ((first < 0) | (first > k))
        return found | self.pgd.robust

    # ---------------------------------------------------------- attack checks
    def pgd_run(self) -> None:
        K = self.cfg.pgd_steps
        self.progress(f"PGD-{K} (no random start, step ε/10, loss traced)")
        attack = PGD("linf", self.eps, steps=K, step_size=self.eps / 10, random_start=False)
        self.pgd = self.run(attack, trace=True)
        self.white_box[f"pgd{K}"] = self.pgd.robust

    def iterative_vs_single(self) -> CheckResult:
        self.progress("FGSM")
        fgsm = self.run(FGSM("linf", self.eps)).robust
        self.white_box["fgsm"] = fgsm
        c = compare(fgsm, self.pgd.robust)  # type: ignore[union-attr]
        # fail when FGSM significantly beats PGD: the PGD number is inflated
        return outcome(
            c["significant"],
            "iterative_vs_single_step",
            "attacks",
            "masked",
            f"PGD-{self.cfg.pgd_steps} robust {c['reference']:.1%} vs FGSM {c['accuracy']:.1%} "
            f"(fail if FGSM significantly beats PGD: {pair_words(c)})",
            pgd=c["reference"],
            fgsm=c["accuracy"],
            **pair_evidence(c),
            margin=c["margin"],
            discordant=c["discordant"],
        )

    def eot_gain(self) -> CheckResult:
        """On a randomised model: PGD-K on single stochastic passes (what an attack that
        ignores the randomness reports) against the same PGD-K with EOT (Athalye, Carlini &
        Wagner, ICML 2018, §4.3). EOT significantly lower shows the single-pass number is
        inflated by stochastic gradients."""
        K = self.cfg.pgd_steps
        if not self.random:
            return skipped(
                "eot_gain", "attacks", "masked",
                "deterministic model: averaging over passes changes nothing",
            )  # fmt: skip
        self.progress(f"PGD-{K} on single passes (no EOT), against the EOT run")
        # as the EOT run does, it neither stops at a lucky pass nor picks the lucky iterate:
        # the two runs differ only in the gradient averaging
        attack = PGD("linf", self.eps, steps=K, step_size=self.eps / 10, random_start=False,
                     early_stop=False, select="last")  # fmt: skip
        single = self.run(attack, eot=False).robust
        c = compare(self.pgd.robust, single)  # type: ignore[union-attr]
        return outcome(
            c["significant"],
            "eot_gain",
            "attacks",
            "masked",
            f"PGD-{K} on single passes robust {c['reference']:.1%} vs with EOT over "
            f"{self.cfg.eot_iter} passes {c['accuracy']:.1%} (fail if EOT is significantly "
            f"lower — the single-pass number is inflated: {pair_words(c)})",
            single_pass=c["reference"],
            eot=c["accuracy"],
            eot_iter=self.cfg.eot_iter,
            **pair_evidence(c),
            margin=c["margin"],
        )

    def convergence_iterations(self) -> CheckResult:
        K = self.cfg.pgd_steps
        ks, k = [], 10
        while k < K:
            ks.append(k)
            k *= 2
        half = max(K // 2, 1)
        ks = sorted({*ks, half, K})
        curve = {str(k): self.pgd_at(k).float().mean().item() for k in ks}
        c = compare(self.pgd_at(K), self.pgd_at(half))
        return outcome(
            c["significant"],
            "convergence_iterations",
            "attacks",
            "suspicious",
            f"PGD robust accuracy at k = {', '.join(curve)}: "
            f"{', '.join(f'{v:.1%}' for v in curve.values())}; the last doubling "
            f"({half}→{K}) lowers it by {c['drop']:.1%} (fail if significant: {pair_words(c)})",
            curve=curve,
            last_doubling_drop=c["drop"],
            **pair_evidence(c),
            margin=c["margin"],
        )

    def convergence_restarts(self) -> CheckResult:
        R, steps = self.cfg.restarts, self.cfg.restart_steps
        self.progress(f"PGD-{steps} with random start, {R} restarts")
        runs = []
        for r in range(R):
            attack = PGD(
                "linf", self.eps, steps=steps, step_size=2.5 * self.eps / steps,
                random_start=True, seed=self.seed + 1000 + r,
            )  # fmt: skip
            runs.append(self.run(attack).robust)
        one = runs[0]
        all_ = torch.stack(runs).all(0)
        self.white_box[f"pgd{steps}-rs-x{R}"] = all_
        c = compare(all_, one)
        return outcome(
            c["significant"],
            "convergence_restarts",
            "attacks",
            "suspicious",
            f"random-start PGD-{steps}: 1 restart {c['reference']:.1%}, {R} restarts "
            f"{c['accuracy']:.1%} (fail if the restarts significantly lower it: {pair_words(c)})",
            one_restart=c["reference"],
            restarts=R,
            all_restarts=c["accuracy"],
            **pair_evidence(c),
            margin=c["margin"],
        )

    def margin_targeted(self) -> CheckResult:
        """Margin-loss PGD and APGD-T (targeted DLR) join the white-box set, so the number the
        black-box, transfer and substitution checks defend is the strongest gradient number;
        the check compares them with the CE PGD-K number."""
        steps, K = self.cfg.restart_steps, self.cfg.pgd_steps
        self.progress(f"margin PGD-{steps} and APGD-T ({steps} steps)")
        margin = CWMarginPGD(
            "linf", self.eps, steps=steps, step_size=2.5 * self.eps / steps,
            random_start=True, seed=self.seed + 7000,
        )  # fmt: skip
        robust = self.run(margin).robust
        self.white_box[f"cw-pgd{steps}"] = robust
        classes = int(ac.batched_logits(self.model, self.x[:1], self.batch_size).shape[1])
        targets = min(self.cfg.apgd_targets, classes - 1)
        evidence: dict[str, Any] = {"margin_pgd": int(robust.sum()) / robust.numel()}
        if classes >= 4:  # APGD-T's DLR loss needs the 3 largest other logits
            apgd = self.run(APGDT("linf", self.eps, steps=steps, targets=targets,
                                  seed=self.seed + 8000)).robust  # fmt: skip
            self.white_box[f"apgd-t{steps}x{targets}"] = apgd
            evidence["apgd_t"] = int(apgd.sum()) / apgd.numel()
            robust = robust & apgd
        c = compare(robust, self.pgd.robust)  # type: ignore[union-attr]
        return outcome(
            c["significant"],
            "margin_targeted",
            "attacks",
            "suspicious",
            f"margin PGD-{steps}"
            + (f" and APGD-T ({targets} targets)" if "apgd_t" in evidence else "")
            + f" together {c['accuracy']:.1%} vs CE PGD-{K} {c['reference']:.1%} (fail if "
            f"significantly lower — report the strongest white-box number: {pair_words(c)})",
            **evidence,
            pgd=c["reference"],
            together=c["accuracy"],
            **pair_evidence(c),
            margin=c["margin"],
        )

    def eps_growth(self) -> CheckResult:
        steps = self.cfg.growth_steps
        self.progress(f"ε growth: PGD-{steps} at {list(EPS_MULTIPLIERS)}·ε")
        curve: dict[str, float] = {}
        n = int(self.x.shape[0])
        survivors = n
        for m in EPS_MULTIPLIERS:
            eps = min(m * self.eps, 1.0)
            attack = PGD(
                "linf", eps, steps=steps, step_size=2.5 * eps / steps,
                random_start=True, seed=self.seed + 2000 + m,
            )  # fmt: skip
            survivors = int(self.run(attack).robust.sum())
            curve[f"{eps:.4g}"] = survivors / n
            if eps >= 1.0:
                break
        last = list(curve.values())[-1]
        lo, hi = ac.clopper_pearson(survivors, n)
        # a sanity bound: a large enough ε breaks every model; decided on the count
        return outcome(
            not rate_at_most(survivors, n, ac.EPS_GROWTH_FLOOR),
            "eps_growth",
            "attacks",
            "masked",
            f"robust accuracy at ε = {', '.join(curve)}: "
            f"{', '.join(f'{v:.1%}' for v in curve.values())}; {survivors} of {n} survive the "
            f"largest (90% CI {lo:.1%} to {hi:.1%}; fail unless at most "
            f"{ac.EPS_GROWTH_FLOOR:.0%})",
            curve=curve,
            largest_eps_accuracy=last,
            threshold=ac.EPS_GROWTH_FLOOR,
            survivors=survivors,
            n=n,
            ci=[lo, hi],
        )

    def unbounded(self) -> CheckResult:
        steps = self.cfg.unbounded_steps
        self.progress(f"unbounded attack: PGD-{steps}, ε = 1, step {UNBOUNDED_STEP}")
        attack = PGD(
            "linf", 1.0, steps=steps, step_size=UNBOUNDED_STEP, random_start=True,
            seed=self.seed + 3000,
        )  # fmt: skip
        result = self.run(attack)
        survivors = int(result.robust.sum())
        return outcome(
            survivors > 0,
            "unbounded_attack",
            "attacks",
            "masked",
            f"PGD-{steps} over the whole [0, 1] box leaves {survivors} of {self.x.shape[0]} "
            "points correctly classified (fail if any)",
            survivors=survivors,
            robust_accuracy=result.robust_accuracy,
            steps=steps,
        )

    def black_box(self, which: str) -> CheckResult:
        if which == "square":
            q = self.cfg.square_queries
            self.progress(f"Square, {q} queries")
            # the rescaled schedule: every halving of the window within the audit's few queries
            attack = Square(self.eps, queries=q, schedule="rescaled", seed=self.seed + 4000)
            label = f"Square ({q} queries)"
        else:
            it, s = self.cfg.spsa_iterations, self.cfg.spsa_samples
            self.progress(f"SPSA, {it} iterations × {s} samples")
            attack = SPSA(
                self.eps,
                iterations=it,
                samples=s,
                seed=self.seed + 5000,
                per_image=True if self.batch_dependent() else "auto",
            )
            per_image = attack.queries_one_image_at_a_time(self.model)
            label = f"SPSA ({it}×{s}{', one image at a time' if per_image else ''})"
        robust = self.run(attack).robust
        c = compare(robust, self.strongest_white_box())
        extra = {"per_image": per_image} if which == "spsa" else {}
        return outcome(
            c["significant"],
            f"black_box_{which}",
            "attacks",
            "masked",
            f"{label} robust {c['accuracy']:.1%} vs strongest white-box {c['reference']:.1%} "
            f"(fail if significantly lower: {pair_words(c)})",
            black_box=c["accuracy"],
            white_box=c["reference"],
            **pair_evidence(c),
            margin=c["margin"],
            discordant=c["discordant"],
            **extra,
        )

    def remember_batch_check(self, check: CheckResult) -> CheckResult:
        self.batch_check = check
        return check

    def batch_dependent(self) -> bool:
        """The batch-composition check saw an image's outputs move with its batch-mates:
        predictions or gradients (it failed) or ODE step grids changed."""
        check = self.batch_check
        if check is None or check.status == "skipped" or "random_pass" in check.evidence:
            return False
        # None: the model's solves left no step grids to compare
        return check.failed or (check.evidence.get("step_grid_changes") or 0) > 0

    def transfer(self) -> CheckResult:
        steps = self.cfg.transfer_steps
        attack = PGD(
            "linf", self.eps, steps=steps, step_size=2.5 * self.eps / steps,
            random_start=True, seed=self.seed + 6000,
        )  # fmt: skip
        if self.surrogate is not None:
            source = "the given surrogate"
            self.progress(f"transfer: PGD-{steps} on the surrogate")
            with model_mode(self.surrogate, "eval"):
                x_adv = self.run(attack, model=self.surrogate, eot=False).x_adv
        elif self.blocks:
            source = "the model with the fixed-step substitute solver"
            self.progress(f"transfer: PGD-{steps} on the fixed-step substitute")
            subs = [substitute_solver(b.solver, "fixed") for b in self.blocks]
            with solvers_replaced(self.blocks, subs):
                x_adv = self.run(attack).x_adv
        else:
            return skipped(
                "transfer", "attacks", "masked",
                "no surrogate given and the model has no ODE blocks to substitute",
            )  # fmt: skip
        clean = ac.batched_logits(self.model, self.x, self.batch_size).argmax(1) == self.y
        pred = ac.batched_logits(self.model, x_adv, self.batch_size).argmax(1)
        robust = clean & (pred == self.y)
        c = compare(robust, self.strongest_white_box())
        return outcome(
            c["significant"],
            "transfer",
            "attacks",
            "masked",
            f"PGD-{steps} adversarials from {source}: robust {c['accuracy']:.1%} vs "
            f"white-box {c['reference']:.1%} (fail if significantly lower: {pair_words(c)})",
            transfer=c["accuracy"],
            white_box=c["reference"],
            **pair_evidence(c),
            margin=c["margin"],
            source=source,
        )

    # ---------------------------------------------------------- PGD-run indicators
    def loss_converged(self) -> CheckResult:
        trace = self.pgd.loss_trace  # type: ignore[union-attr]
        K = trace.shape[0] - 1
        full = ~torch.isnan(trace).any(0)  # points attacked through every iteration
        if K < 10 or not full.any():
            # nothing to measure is no evidence of convergence: not applicable, not a pass
            return skipped(
                "loss_converged", "gradients", "suspicious",
                "not applicable: no point was attacked through every iteration (all broken "
                "or misclassified)" if K >= 10 else f"not applicable: PGD-{K} has < 10 steps",
                points=int(full.sum()),
            )  # fmt: skip
        best = torch.cummax(trace[:, full].double(), 0).values
        total = best[-1] - best[0]
        late = best[-1] - best[math.ceil(0.9 * K)]
        moving = total > 1e-6
        if not moving.any():
            share = 0.0
        else:
            share = float((late[moving] / total[moving]).mean())
        return outcome(
            share > ac.LOSS_MOVING_SHARE,
            "loss_converged",
            "gradients",
            "suspicious",
            f"best loss still rising in the last 10% of PGD-{K}: {share:.1%} of its whole "
            f"increase on average over {int(full.sum())} surviving points "
            f"(fail above {ac.LOSS_MOVING_SHARE:.0%})",
            late_share=share,
            points=int(full.sum()),
            threshold=ac.LOSS_MOVING_SHARE,
        )

    def unreturned(self) -> CheckResult:
        r = self.pgd
        assert r is not None and r.first_adversarial is not None
        found = r.clean_correct & (r.first_adversarial >= 0)
        lost = int((found & ~r.success).sum())
        pred = ac.batched_logits(self.model, r.x_adv, self.batch_size).argmax(1)
        again = (pred != self.y) | ~r.clean_correct
        disagree = int((again != r.success).sum())
        return outcome(
            lost > 0 or disagree > 0,
            "unreturned_adversarials",
            "gradients",
            "suspicious",
            f"{lost} points had an adversarial iterate but the returned point is not adversarial; "
            f"re-evaluation disagrees with the attack on {disagree} (fail if any)",
            found_not_returned=lost,
            reevaluation_disagrees=disagree,
        )

    # ---------------------------------------------------------- ODE
    def solver_substitution(self) -> CheckResult:
        if not self.blocks:
            return skipped("solver_substitution", "ode", "masked", "the model has no ODE blocks")
        steps = min(self.cfg.substitute_steps, self.cfg.pgd_steps)
        deployed = self.pgd_at(steps)
        evidence: dict[str, Any] = {"deployed": deployed.float().mean().item()}
        worst = None
        for s in self.cfg.substitutes:
            self.progress(f"solver substitution: PGD-{steps} with {s} gradients")
            attack = SolverSubstitution(
                PGD("linf", self.eps, steps=steps, step_size=self.eps / 10, random_start=False),
                s,
            )
            robust = self.run(attack).robust
            self.white_box[f"pgd{steps}+{s}"] = robust
            c = compare(robust, deployed)
            evidence[s] = c["accuracy"]
            # the substitute with the strongest evidence: smallest p, then largest drop
            if worst is None or (c["p_value"], -c["drop"]) < (
                worst[1]["p_value"],
                -worst[1]["drop"],
            ):
                worst = (s, c)
        assert worst is not None
        name, c = worst
        return outcome(
            c["significant"],
            "solver_substitution",
            "ode",
            "masked",
            f"PGD-{steps} robust {evidence['deployed']:.1%} through the deployed solver; with "
            + ", ".join(f"{s} gradients {evidence[s]:.1%}" for s in self.cfg.substitutes)
            + f" (fail if a substitute significantly lowers it; strongest, {name}: "
            f"{pair_words(c)})",
            **evidence,
            **pair_evidence(c),
            margin=c["margin"],
            strongest_substitute=name,
        )


def _guard(name: str, group: str, severity: str, fn: Callable[[], CheckResult]) -> CheckResult:
    """Run one check; a model that returns non-finite logits, or whose ODE solver gives up,
    fails that check instead of stopping the audit."""
    try:
        return fn()
    except (AttackError, SolverError) as exc:
        return failed(name, group, severity, f"the model broke the check: {exc}", error=str(exc))  # type: ignore[arg-type]


def audit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = 8 / 255,
    level: str = "standard",
    surrogate: nn.Module | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: Callable[[str], None] | None = None,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    meta: dict[str, Any] | None = None,
) -> AuditReport:
    """Audit ``model`` (images in [0, 1]) for gradient masking on the points ``x``, ``y`` at the
    L∞ radius ``eps``; ``level`` (quick | standard | thorough) sets the budgets. ``surrogate``:
    a model whose PGD adversarials are transferred to ``model``. ``progress`` receives a line
    before each attack.

    With ``out_dir`` the folder is claimed before anything runs (one writer; an audit of
    another model, data or settings there is refused unless ``overwrite``) and
    ``audit.json``/``audit.md`` are written at the end. ``meta`` (source, checkpoint) goes
    into the report's info as it is; what was audited is read from the model itself."""
    if level not in LEVELS:
        raise InputError(f"unknown audit level '{level}'; choose one of: {', '.join(LEVELS)}")
    if not (isinstance(eps, int | float) and math.isfinite(eps) and 0 < eps <= 1):
        raise InputError(f"eps must be a number in (0, 1], got {eps!r}")
    check_inputs_fit_model(model, x, y)
    # odeint calls inside any model (torchdiffeq's or robustode's) are solve sites too
    with intercepting(model):
        discover_sites(model, x)
        return _audit_into(model, x, y, eps=eps, level=level, surrogate=surrogate, seed=seed,
                           batch_size=batch_size, progress=progress, out_dir=out_dir,
                           overwrite=overwrite, meta=meta)  # fmt: skip


def _audit_into(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    level: str,
    surrogate: nn.Module | None,
    seed: int,
    batch_size: int | None,
    progress: Callable[[str], None] | None,
    out_dir: str | Path | None,
    overwrite: bool,
    meta: dict[str, Any] | None,
) -> AuditReport:
    fingerprint = audit_fingerprint(
        model, x, y, eps=eps, level=level, seed=seed, batch_size=batch_size, surrogate=surrogate
    )
    folder = None
    if out_dir is not None:
        folder = OutputFolder(out_dir, "audit", overwrite=overwrite).claim()
    try:
        if folder is not None:
            folder.refuse_other_settings(
                AUDIT_FILE, fingerprint, what="an audit", key=("info", "fingerprint")
            )
        if progress is not None:
            progress(
                f"auditing {x.shape[0]} images, ε = {eps:.5g} ({eps * 255:.3g}/255), level "
                f"{level} ..."
            )
        report = _audit(model, x, y, eps=eps, level=level, surrogate=surrogate, seed=seed,
                        batch_size=batch_size, progress=progress)  # fmt: skip
        report.info.update(meta or {})
        report.info["fingerprint"] = fingerprint
        report.info["weights_sha256"] = fingerprint["model"]["weights_sha256"]
        if folder is not None:
            write_audit(report, folder)
        return report
    finally:
        if folder is not None:
            folder.release()


def _audit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    level: str,
    surrogate: nn.Module | None,
    seed: int,
    batch_size: int | None,
    progress: Callable[[str], None] | None,
) -> AuditReport:
    start = time.perf_counter()
    a = _Audit(model, x.detach(), y.long(), float(eps), level, surrogate, seed, batch_size,
               progress)  # fmt: skip
    cfg, x, y = a.cfg, a.x, a.y
    p, b = min(cfg.fd_points, x.shape[0]), min(cfg.batch_points, x.shape[0])
    others = x[b : 2 * b]
    if others.shape[0] < b:  # too few points for other batch-mates: uniform noise images
        g = torch.Generator(device=x.device).manual_seed(seed)
        others = torch.rand(x[:b].shape, generator=g, device=x.device)
    why = {
        "finite_differences": "two passes differ by chance, so a central difference measures "
        "the randomness, not the gradient",
        "batch_composition": "outputs change between identical passes, so a change with the "
        "batch-mates cannot be told from chance",
        "unreturned_adversarials": "re-evaluating a returned point is another random draw",
        "loss_converged": "the traced loss is one random draw per iterate, so its best-so-far "
        "keeps rising by chance",
    }
    before_pgd: list[tuple[str, str, str, Callable[[], CheckResult]]] = [
        ("zero_gradients", "gradients", "suspicious",
         lambda: ac.check_zero_gradients(model, x, y, batch_size=batch_size)),
        ("randomised_outputs", "gradients", "suspicious",
         lambda: ac.randomness_result(a.randomness, a.cfg.eot_iter)),
        ("softmax_outputs", "gradients", "suspicious",
         lambda: ac.check_softmax_outputs(model, x, batch_size=batch_size)),
        ("noise_stability", "gradients", "suspicious",
         lambda: ac.check_noise_stability(model, x, a.eps, draws=cfg.noise_draws, seed=seed,
                                          batch_size=batch_size)),
    ]  # fmt: skip
    on_pgd = [
        ("iterative_vs_single_step", "attacks", "masked", a.iterative_vs_single),
        ("eot_gain", "attacks", "masked", a.eot_gain),
        ("convergence_iterations", "attacks", "suspicious", a.convergence_iterations),
        ("convergence_restarts", "attacks", "suspicious", a.convergence_restarts),
        ("margin_targeted", "attacks", "suspicious", a.margin_targeted),
        ("loss_converged", "gradients", "suspicious", lambda: a.deterministic_only(
            "loss_converged", "gradients", "suspicious", why["loss_converged"],
            a.loss_converged)),
        ("unreturned_adversarials", "gradients", "suspicious", lambda: a.deterministic_only(
            "unreturned_adversarials", "gradients", "suspicious",
            why["unreturned_adversarials"], a.unreturned)),
        ("solver_substitution", "ode", "masked", a.solver_substitution),
    ]  # fmt: skip
    after_pgd = [
        ("eps_growth", "attacks", "masked", a.eps_growth),
        ("unbounded_attack", "attacks", "masked", a.unbounded),
        ("black_box_square", "attacks", "masked", lambda: a.black_box("square")),
        ("transfer", "attacks", "masked", a.transfer),
        ("finite_differences", "gradients", "suspicious", lambda: a.deterministic_only(
            "finite_differences", "gradients", "suspicious", why["finite_differences"],
            lambda: ac.check_finite_differences(model, x[:p], y[:p],
                                                directions=cfg.fd_directions, seed=seed))),
        ("batch_composition", "ode", "suspicious", lambda: a.remember_batch_check(
            a.deterministic_only("batch_composition", "ode", "suspicious",
                                 why["batch_composition"],
                                 lambda: ac.check_batch_composition(model, x[:b], y[:b],
                                                                    others)))),
        # after batch_composition: on a model whose outputs move with the batch, SPSA queries
        # one image at a time (attacks seed their own RNG, so the order changes no other check)
        ("black_box_spsa", "attacks", "masked", lambda: a.black_box("spsa")),
    ]  # fmt: skip
    checks: list[CheckResult] = []
    with model_mode(model, "eval"):
        # first: whether the model is randomised decides how every attack runs
        a.randomness = check_randomness(model, x, y, seed=seed)
        if a.random:
            a.progress(f"randomised model: every gradient attack uses EOT over "
                       f"{cfg.eot_iter} passes")  # fmt: skip
        clean = ac.batched_logits(model, x, batch_size).argmax(1) == y
        a.progress("gradients and outputs")
        checks += [_guard(*spec) for spec in before_pgd]
        try:
            a.pgd_run()
        except (AttackError, SolverError) as exc:
            checks.append(failed("pgd", "attacks", "masked", f"PGD broke: {exc}", error=str(exc)))
        if a.pgd is not None:
            checks += [_guard(*spec) for spec in on_pgd]
        checks += [_guard(*spec) for spec in after_pgd]
    clean_correct = int(clean.sum())
    order = {name: i for i, name in enumerate(CHECK_ORDER)}
    checks.sort(key=lambda c: order.get(c.name, len(order)))
    info = {
        "ode_blocks": [b.solver.describe() for b in a.blocks],
        "strongest_white_box": a.strongest_white_box().float().mean().item(),
        "white_box": {k: v.float().mean().item() for k, v in a.white_box.items()},
        "seed": seed,
        "margin_rule": (
            f"exact one-sided McNemar test at α = {ac.ALPHA:g} on the discordant points, and a "
            f"drop above {ac.MARGIN_FLOOR:.1%}"
        ),
        "alpha": ac.ALPHA,
        "clean_correct": clean_correct,
        "randomised": a.random,
        "eot_iter": cfg.eot_iter if a.random else 1,
    }
    warnings = []
    if clean_correct < ac.MIN_CLEAN_CORRECT:
        warnings.append(
            f"only {clean_correct} of {int(a.x.shape[0])} points are clean-correct (fewer than "
            f"{ac.MIN_CLEAN_CORRECT}): too few to decide anything; the exact test needs at "
            "least 5 points one attack breaks and the other does not to reach p ≤ 0.05"
        )
    return AuditReport(
        verdict=verdict_of(checks),
        checks=checks,
        eps=float(eps),
        n=int(a.x.shape[0]),
        level=level,
        seconds=time.perf_counter() - start,
        clean_accuracy=int(clean.sum()) / int(a.x.shape[0]),
        info=info,
        warnings=warnings,
    )


CHECK_ORDER = (
    "pgd",
    "iterative_vs_single_step",
    "eot_gain",
    "convergence_iterations",
    "convergence_restarts",
    "margin_targeted",
    "eps_growth",
    "unbounded_attack",
    "black_box_square",
    "black_box_spsa",
    "transfer",
    "zero_gradients",
    "randomised_outputs",
    "softmax_outputs",
    "noise_stability",
    "loss_converged",
    "unreturned_adversarials",
    "solver_substitution",
    "finite_differences",
    "batch_composition",
)

__all__ = [
    "FAIL_ON",
    "LEVELS",
    "VERDICTS",
    "AuditLevel",
    "AuditReport",
    "CheckResult",
    "audit",
    "fails_on",
    "passed",
    "verdict_of",
    "write_audit",
]
