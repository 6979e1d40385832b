"""The gradient-masking audit's building blocks: exact statistics on integer counts (the paired
McNemar test, Clopper–Pearson intervals, rate thresholds), check results, and the checks that
need no attack run (gradients, outputs, finite differences, batch composition).

Every check returns a :class:`CheckResult`: ``status`` pass | fail | skipped, the
``severity`` a failure implies (``masked`` or ``suspicious``), its evidence (plain
numbers, JSON-ready) and a one-line message. The checks built on attack runs live
in :mod:`robustode.evaluate.audit`, which orders them and reaches the verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.losses import cw_margin
from ..errors import InputError

Status = Literal["pass", "fail", "skipped"]
Severity = Literal["masked", "suspicious"]

# Two attacks on the same points: attack A beats reference B when the exact one-sided McNemar
# test (binomial test on the discordant points) rejects "equally strong" at level ALPHA and the
# drop in robust accuracy exceeds MARGIN_FLOOR (a minimum effect: one or two odd points on a
# large n are significant but show nothing worth a verdict).
ALPHA = 0.05
MARGIN_FLOOR = 0.015
# the old normal-approximation margin max(MARGIN_FLOOR, MARGIN_SIGMAS · sqrt(discordant) / n),
# kept as paired_margin() for callers; no decision uses it any more
MARGIN_SIGMAS = 2.0
# fewer clean-correct points than this: the report warns that nothing can be decided
MIN_CLEAN_CORRECT = 20
# Thresholds of the individual checks (docs/audit.md explains each).
ZERO_GRADIENT_SHARE = 0.05
EPS_GROWTH_FLOOR = 0.05
LOSS_MOVING_SHARE = 0.1
FD_MIN_COSINE = 0.5
BATCH_MIN_GRADIENT_COSINE = 0.9
# two identical passes of a deterministic model agree to rounding; a random backward does not
REPEAT_MIN_GRADIENT_COSINE = 0.999
RANDOM_OUTPUT_RTOL = 1e-5


@dataclass
class CheckResult:
    """One check's outcome: what failing it implies and the numbers behind the status."""

    name: str
    group: str
    status: Status
    severity: Severity
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "status": self.status,
            "severity": self.severity,
            "message": self.message,
            "evidence": self.evidence,
        }


def passed(name: str, group: str, severity: Severity, message: str, **evidence) -> CheckResult:
    return CheckResult(name, group, "pass", severity, message, evidence)


def failed(name: str, group: str, severity: Severity, message: str, **evidence) -> CheckResult:
    return CheckResult(name, group, "fail", severity, message, evidence)


def skipped(name: str, group: str, severity: Severity, message: str, **evidence) -> CheckResult:
    return CheckResult(name, group, "skipped", severity, message, evidence)


def outcome(
    bad: bool, name: str, group: str, severity: Severity, message: str, **evidence
) -> CheckResult:
    return (failed if bad else passed)(name, group, severity, message, **evidence)


# ------------------------------------------------------------------ exact statistics
def _exact(threshold: float | Fraction) -> Fraction:
    """A threshold as the exact decimal it is written as (0.05 → 1/20, not the binary float)."""
    return threshold if isinstance(threshold, Fraction) else Fraction(str(threshold))


def _check_count(count: int, n: int) -> None:
    if n < 1:
        raise InputError(f"n must be ≥ 1, got {n}")
    if not 0 <= count <= n:
        raise InputError(f"count must be in [0, {n}], got {count}")


def rate_exceeds(count: int, n: int, threshold: float | Fraction) -> bool:
    """Whether count/n > threshold, decided on integers (5 of 100 does not exceed 5 %)."""
    _check_count(count, n)
    return Fraction(count, n) > _exact(threshold)


def rate_at_most(count: int, n: int, threshold: float | Fraction) -> bool:
    """Whether count/n ≤ threshold, decided on integers (5 of 100 is at most 5 %)."""
    return not rate_exceeds(count, n, threshold)


def binomial_upper_tail(k: int, d: int) -> Fraction:
    """P(X ≥ k) for X ~ Binomial(d, 1/2), as an exact fraction."""
    if d < 0 or k > d + 1:
        raise InputError(f"need 0 ≤ d and k ≤ d + 1, got k = {k}, d = {d}")
    k = max(k, 0)
    return Fraction(sum(math.comb(d, i) for i in range(k, d + 1)), 2**d)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """One-sided exact McNemar p-value that attack A is stronger than attack B on the same
    points: ``only_a`` points broken by A alone, ``only_b`` by B alone. Under the null each of
    the d = only_a + only_b discordant points falls either way with probability 1/2, so the
    p-value is P(X ≥ only_a), X ~ Binomial(d, 1/2) (McNemar 1947; the exact form is the
    binomial sign test). 1.0 when there is no discordant point."""
    if only_a < 0 or only_b < 0:
        raise InputError(f"counts must be ≥ 0, got {only_a} and {only_b}")
    return float(binomial_upper_tail(only_a, only_a + only_b))


def clopper_pearson(k: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """The exact (Clopper–Pearson 1934) interval for a binomial rate k/n with one-sided error
    ``alpha`` at each end (two-sided level 1 − 2·alpha: 90 % at the audit's α = 0.05, the
    interval that matches a one-sided test at 5 %)."""
    _check_count(k, n)
    from scipy.stats import beta  # scikit-learn's dependency, so always installed

    lower = 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))
    upper = 1.0 if k == n else float(beta.ppf(1 - alpha, k + 1, n - k))
    return lower, upper


def paired_test(only_a: int, only_b: int, n: int, alpha: float = ALPHA) -> dict[str, Any]:
    """Whether attack A beats attack B on the same ``n`` points: the exact one-sided McNemar
    test at ``alpha`` and a drop (only_a − only_b)/n above :data:`MARGIN_FLOOR`, both decided
    on integers. The difference's interval is the exact conditional one: Clopper–Pearson for
    π = P(a discordant point is A's) given d discordant points, mapped by d/n·(2π − 1)."""
    if only_a < 0 or only_b < 0 or only_a + only_b > n:
        raise InputError(f"need 0 ≤ only_a, only_b and only_a + only_b ≤ n = {n}")
    d = only_a + only_b
    tail = binomial_upper_tail(only_a, d)
    if d:
        lo, hi = clopper_pearson(only_a, d, alpha)
        ci = (d / n * (2 * lo - 1), d / n * (2 * hi - 1))
    else:
        ci = (0.0, 0.0)
    significant = tail <= _exact(alpha) and Fraction(only_a - only_b, n) > _exact(MARGIN_FLOOR)
    return {"p_value": float(tail), "significant": bool(significant), "drop_ci": ci}


def paired_margin(discordant: int, n: int) -> float:
    """The audit's former normal-approximation margin, max(1.5 points, 2·sqrt(discordant)/n):
    two standard deviations of the difference under McNemar's null. Kept for callers; the
    audit now decides with :func:`paired_test` on the counts."""
    if n < 1:
        raise InputError(f"n must be ≥ 1, got {n}")
    if discordant < 0 or discordant > n:
        raise InputError(f"discordant must be in [0, {n}], got {discordant}")
    return max(MARGIN_FLOOR, MARGIN_SIGMAS * math.sqrt(discordant) / n)


def compare(robust: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """How far ``robust`` (per-point bools, the attack under test) lies below ``reference`` on
    the same points: the counts (n, both broken, broken only by the attack, only by the
    reference), accuracies, drop (reference − robust), the exact paired test of
    :func:`paired_test` and whether the attack significantly beats the reference."""
    if robust.shape != reference.shape or robust.dim() != 1 or robust.numel() == 0:
        raise InputError("compare needs two non-empty per-point vectors of the same length")
    n = robust.numel()
    only_attack = int((reference & ~robust).sum())  # the attack breaks them, the reference not
    only_reference = int((robust & ~reference).sum())
    both_broken = int((~robust & ~reference).sum())
    test = paired_test(only_attack, only_reference, n)
    return {
        "accuracy": int(robust.sum()) / n,
        "reference": int(reference.sum()) / n,
        "drop": (only_attack - only_reference) / n,
        "n": n,
        "both_broken": both_broken,
        "only_attack": only_attack,
        "only_reference": only_reference,
        "discordant": only_attack + only_reference,
        "margin": MARGIN_FLOOR,
        "alpha": ALPHA,
        **test,
    }


def pair_evidence(c: dict[str, Any]) -> dict[str, Any]:
    """The counts, p-value and interval of a :func:`compare` for a check's evidence."""
    return {
        "n": c["n"],
        "both_broken": c["both_broken"],
        "only_attack": c["only_attack"],
        "only_reference": c["only_reference"],
        "p_value": c["p_value"],
        "drop_ci": list(c["drop_ci"]),
    }


def pair_words(c: dict[str, Any]) -> str:
    """A compare's counts and test in words, for a check's message."""
    lo, hi = c["drop_ci"]
    return (
        f"n {c['n']}, both broken {c['both_broken']}, only the attack {c['only_attack']}, only "
        f"the reference {c['only_reference']}; exact McNemar one-sided p = {c['p_value']:.3g} "
        f"(α {c['alpha']:g}), drop {c['drop']:.1%} (90% CI {lo:.1%} to {hi:.1%}); counts "
        f"when p ≤ {c['alpha']:g} and the drop exceeds {c['margin']:.1%}"
    )


# ------------------------------------------------------------------ model helpers
def batched_logits(model: nn.Module, x: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    """Logits without gradient, in the audit's batches."""
    chunk = batch_size or max(x.shape[0], 1)
    with torch.no_grad():
        return torch.cat([model(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])


def input_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int | None,
    loss: str = "ce",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point loss and its input gradient (CE, or the CW margin with ``loss="margin"``)."""
    chunk = batch_size or max(x.shape[0], 1)
    losses, grads = [], []
    for i in range(0, x.shape[0], chunk):
        xb = x[i : i + chunk].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            value = point_loss(model(xb), y[i : i + chunk], loss)
            (g,) = torch.autograd.grad(value.sum(), xb)
        losses.append(value.detach())
        grads.append(g.detach())
    return torch.cat(losses), torch.cat(grads)


def point_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    return cw_margin(logits, y)


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine; NaN where both rows are zero, 0 where exactly one is."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(1) / (na * nb).clamp_min(1e-300)
    cos = torch.where((na == 0) ^ (nb == 0), torch.zeros_like(cos), cos)
    return torch.where((na == 0) & (nb == 0), torch.full_like(cos, math.nan), cos)


# ------------------------------------------------------------------ gradient checks
def check_zero_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int | None = None
) -> CheckResult:
    """Share of points whose CE input gradient at the clean input is all zero or non-finite."""
    _, g = input_gradients(model, x, y, batch_size)
    flat = g.flatten(1)
    finite = torch.isfinite(flat).all(1)
    zero = finite & (flat.abs().amax(1) == 0)
    bad = int((zero | ~finite).sum())
    n = int(flat.shape[0])
    share = bad / n if n else 0.0
    # a diagnostic: zero gradients stop gradient attacks, but only an attack that then does
    # better (black-box, transfer, unbounded) shows the robust accuracy is inflated
    return outcome(
        n > 0 and rate_exceeds(bad, n, ZERO_GRADIENT_SHARE),
        "zero_gradients",
        "gradients",
        "suspicious",
        f"{bad} of {n} points ({share:.1%}) have an all-zero or non-finite input gradient "
        f"(fail above {ZERO_GRADIENT_SHARE:.0%})",
        share=share,
        zero=int(zero.sum()),
        non_finite=int((~finite).sum()),
        threshold=ZERO_GRADIENT_SHARE,
    )


def check_randomised_outputs(
    model: nn.Module, x: torch.Tensor, *, batch_size: int | None = None
) -> CheckResult:
    """The same inputs twice must give the same logits (else the model is randomised: use EOT)."""
    first, second = batched_logits(model, x, batch_size), batched_logits(model, x, batch_size)
    scale = max(float(first.abs().max()), 1.0)
    diff = float((first - second).abs().max())
    changed = int((first.argmax(1) != second.argmax(1)).sum())
    return outcome(
        diff > RANDOM_OUTPUT_RTOL * scale,
        "randomised_outputs",
        "gradients",
        "suspicious",
        f"the same inputs twice: logits differ by up to {diff:.3g}, {changed} predictions change"
        + (" — randomised model, attack it with EOT" if diff > RANDOM_OUTPUT_RTOL * scale else ""),
        max_logit_change=diff,
        prediction_changes=changed,
        tolerance=RANDOM_OUTPUT_RTOL * scale,
    )


def randomness_result(randomness: Any, eot_iter: int) -> CheckResult:
    """The audit's randomness check (AutoAttack's, run before every other check) as a result.

    Reported, never failed: on a randomised model the audit attacks with EOT over
    ``eot_iter`` passes, skips the checks that assume determinism, and lets ``eot_gain``
    show whether single-pass attacks were fooled by the randomness.
    """
    words = randomness.describe()
    if randomness.random:
        words += (
            f" — every gradient attack averages over {eot_iter} passes (EOT); the checks that "
            "assume determinism are skipped"
        )
    return passed(
        "randomised_outputs",
        "gradients",
        "suspicious",
        words,
        randomised=randomness.random,
        max_difference=randomness.max_difference,
        correct_per_pass=list(randomness.correct) if randomness.correct is not None else None,
        passes=randomness.passes,
        eot_iter=eot_iter if randomness.random else 1,
    )


def check_softmax_outputs(
    model: nn.Module, x: torch.Tensor, *, batch_size: int | None = None
) -> CheckResult:
    """Outputs that are already probabilities (rows ≥ 0 summing to 1) flatten CE's gradient."""
    out = batched_logits(model, x, batch_size).double()
    row_sums = out.sum(1)
    probabilities = bool((out >= 0).all() and torch.allclose(row_sums, torch.ones_like(row_sums)))
    return outcome(
        probabilities,
        "softmax_outputs",
        "gradients",
        "suspicious",
        "outputs are probabilities (rows ≥ 0, sum 1): attack the logits instead"
        if probabilities
        else "outputs are logits, not probabilities",
        min_output=float(out.min()),
        max_row_sum_error=float((row_sums - 1).abs().max()),
    )


def check_noise_stability(
    model: nn.Module,
    x: torch.Tensor,
    eps: float,
    *,
    draws: int = 4,
    seed: int = 0,
    batch_size: int | None = None,
) -> CheckResult:
    """Prediction flips under uniform noise in the ε/4 L∞ ball (reported; it never fails)."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    clean = batched_logits(model, x, batch_size).argmax(1)
    flips = []
    for _ in range(draws):
        noise = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * (eps / 4)
        pred = batched_logits(model, (x + noise).clamp(0, 1), batch_size).argmax(1)
        flips.append(pred != clean)
    flipped = torch.stack(flips)
    rate = float(flipped.float().mean())
    return passed(
        "noise_stability",
        "gradients",
        "suspicious",
        f"random noise in the ε/4 ball flips {rate:.1%} of predictions "
        f"({int(flipped.any(0).sum())} points flip at least once in {draws} draws); reported only",
        flip_rate=rate,
        points_flipped=int(flipped.any(0).sum()),
        draws=draws,
        noise_linf=eps / 4,
    )


def check_finite_differences(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    directions: int = 8,
    h: float = 1e-3,
    seed: int = 0,
) -> CheckResult:
    """Per point, cosine between the autograd directional derivatives g·u_j of the margin loss
    and their central-difference estimates (L(x + h·u_j) − L(x − h·u_j)) / 2h, along
    ``directions`` Gaussian directions u_j (unit RMS per pixel). All points move together, so
    a batch-dependent model is differentiated in the batch it is evaluated in."""
    if x.shape[0] == 0:
        return skipped("finite_differences", "gradients", "suspicious", "no points")
    generator = torch.Generator(device=x.device).manual_seed(seed)
    _, g = input_gradients(model, x, y, None, loss="margin")
    autograd_dd, fd_dd = [], []
    for _ in range(directions):
        u = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        with torch.no_grad():
            plus = cw_margin(model(x + h * u), y).double()
            minus = cw_margin(model(x - h * u), y).double()
        fd_dd.append((plus - minus) / (2 * h))
        autograd_dd.append((g.double() * u.double()).flatten(1).sum(1))
    cos = cosine_rows(torch.stack(autograd_dd, 1), torch.stack(fd_dd, 1))
    valid = cos[~torch.isnan(cos)]
    if valid.numel() == 0:
        return passed(
            "finite_differences",
            "gradients",
            "suspicious",
            "the loss is flat along every direction on every point; nothing to compare",
            points=int(x.shape[0]),
            directions=directions,
            h=h,
        )
    median = float(valid.median())
    # a count decided by the exact sign test, as every other check: the median alone flipped
    # with the training seed on BPDA and straight-through models whose points sit near the
    # threshold (10 of 16 below at one seed, 5 at the next), evidence of nothing
    below, points = int((valid < FD_MIN_COSINE).sum()), int(valid.numel())
    p_value = float(binomial_upper_tail(below, points))
    return outcome(
        p_value <= ALPHA,
        "finite_differences",
        "gradients",
        # a diagnostic: h crosses quantisation bins and a straight-through / BPDA gradient is
        # never the true one, yet PGD through it can be as strong as on the bare network
        "suspicious",
        f"{below} of {points} points have a cosine below {FD_MIN_COSINE} between "
        f"autograd and finite-difference directional derivatives (median {median:.3f}; fail "
        f"if significantly more than half: exact one-sided sign test p = {p_value:.3g}, "
        f"α {ALPHA})",
        median_cosine=median,
        min_cosine=float(valid.min()),
        share_below=below / points,
        below=below,
        p_value=p_value,
        points=points,
        directions=directions,
        h=h,
        threshold=FD_MIN_COSINE,
    )


def _step_grids(model: nn.Module, count: int) -> list[list[tuple[float, ...]]]:
    """Per point, the accepted step start times of every ODE block's latest solve."""
    from ..attacks.adaptive import ode_blocks

    grids: list[list[tuple[float, ...]]] = [[] for _ in range(count)]
    for block in ode_blocks(model):
        record = block.last_record
        if record is None:
            continue
        steps = record.accepted_steps()
        for i in range(count):
            own = steps[i] if record.per_sample else steps
            grids[i].append(tuple(t0 for t0, _ in own))  # type: ignore[misc]
    return grids


def _same_grid(a: list[tuple[float, ...]], b: list[tuple[float, ...]], tol: float = 1e-4) -> bool:
    """Same number of accepted steps in every block, step starts equal within ``tol``
    (float noise of batched arithmetic moves a per-sample grid by far less)."""
    return len(a) == len(b) and all(
        len(ga) == len(gb) and all(abs(ta - tb) <= tol for ta, tb in zip(ga, gb, strict=True))
        for ga, gb in zip(a, b, strict=True)
    )


def _logits_grads_grids(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor, list]:
    xb = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xb)
        (g,) = torch.autograd.grad(F.cross_entropy(logits[:keep], y[:keep], reduction="sum"), xb)
    grids = _step_grids(model, x.shape[0])[:keep]
    return logits[:keep].detach(), g[:keep].detach(), grids


def check_batch_composition(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    others: torch.Tensor,
) -> CheckResult:
    """The same images alone (batches of one), together, and together with ``others`` as
    batch-mates: logits, predictions, ODE step grids and input gradients must not change."""
    p = x.shape[0]
    dummy = torch.zeros(others.shape[0], dtype=y.dtype, device=y.device)
    alone = [_logits_grads_grids(model, x[i : i + 1], y[i : i + 1], 1) for i in range(p)]
    a_logits = torch.cat([a[0] for a in alone])
    a_grads = torch.cat([a[1] for a in alone])
    a_grids = [a[2][0] for a in alone]
    b_logits, b_grads, b_grids = _logits_grads_grids(model, x, y, p)
    # the same batch again: what changes here is randomness, not the batch-mates
    r_logits, r_grads, _ = _logits_grads_grids(model, x, y, p)
    repeat_change = float((r_logits - b_logits).abs().max())
    scale = max(float(b_logits.abs().max()), 1.0)
    repeat_cos = float(torch.nan_to_num(cosine_rows(r_grads, b_grads), nan=1.0).min())
    random_forward = repeat_change > RANDOM_OUTPUT_RTOL * scale
    if random_forward or repeat_cos < REPEAT_MIN_GRADIENT_COSINE:
        part = "forward" if random_forward else "backward"
        return failed(
            "batch_composition",
            "gradients",
            "suspicious",
            f"the same batch twice: logits change by up to {repeat_change:.3g}, input "
            f"gradients' min cosine {repeat_cos:.3f} — the {part} pass is random, so a change "
            "with the batch-mates cannot be told from chance (a random "
            + ("forward: attack with EOT)" if part == "forward" else "backward is a fake "
               "gradient, not an ODE effect)"),
            points=p,
            random_pass=part,
            repeat_max_logit_change=repeat_change,
            repeat_min_gradient_cosine=repeat_cos,
            step_grid_changes=None,
        )  # fmt: skip
    m_logits, m_grads, m_grids = _logits_grads_grids(
        model, torch.cat([x, others]), torch.cat([y, dummy]), p
    )
    logit_change = max(
        float((a_logits - b_logits).abs().max()), float((m_logits - b_logits).abs().max())
    )
    preds = torch.stack([a_logits.argmax(1), b_logits.argmax(1), m_logits.argmax(1)])
    pred_changes = int((preds != preds[0]).any(0).sum())
    cos = torch.stack([cosine_rows(a_grads, b_grads), cosine_rows(m_grads, b_grads)])
    cos = torch.nan_to_num(cos, nan=1.0)
    min_cos = float(cos.min())
    grid_changes = sum(
        int(not (_same_grid(a_grids[i], b_grids[i]) and _same_grid(m_grids[i], b_grids[i])))
        for i in range(p)
    )
    # a model whose solves robustode cannot see (no ODE block records) has no grids to compare
    visible = any(grid for grid in b_grids)
    grids_words = f"{grid_changes} of {p} step grids change" if visible else "no step grids seen"
    bad = pred_changes > 0 or min_cos < BATCH_MIN_GRADIENT_COSINE
    return outcome(
        bad,
        "batch_composition",
        "ode",
        "suspicious",
        f"alone / in batch / with other batch-mates: logits change by up to {logit_change:.3g}, "
        f"{pred_changes} predictions change, {grids_words}, "
        f"min gradient cosine {min_cos:.3f} (fail on any prediction change or cosine < "
        f"{BATCH_MIN_GRADIENT_COSINE})",
        points=p,
        max_logit_change=logit_change,
        prediction_changes=pred_changes,
        step_grid_changes=grid_changes if visible else None,
        min_gradient_cosine=min_cos,
        threshold=BATCH_MIN_GRADIENT_COSINE,
    )
