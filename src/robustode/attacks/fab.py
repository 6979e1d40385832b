"""FAB and FAB-T (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with a
fast adaptive boundary attack"), L∞, L2 and L1, as AutoAttack runs them.

FAB looks for the adversarial point *closest* to x. At the iterate x⁽ⁱ⁾ it
linearises the decision boundary of the class whose linearised boundary is
nearest (FAB-T: of one target class t), the hyperplane

    π: f_s(x⁽ⁱ⁾) − f_y(x⁽ⁱ⁾) + ⟨∇f_s(x⁽ⁱ⁾) − ∇f_y(x⁽ⁱ⁾), z − x⁽ⁱ⁾⟩ = 0,

with s = argmin_{k≠y} |f_k − f_y| / ‖∇f_k − ∇f_y‖_q (q the dual norm: L1
for L∞, L2 for L2, L∞ for L1; eq. 4 of the paper). It projects both the
iterate and the original point onto π intersected with the [0, 1] box
(δ⁽ⁱ⁾ and δ_orig, the minimal-norm steps, §3.1) and moves to the biased
combination (eq. 6)

    x⁽ⁱ⁺¹⁾ = clip((1 − α)(x⁽ⁱ⁾ + η δ⁽ⁱ⁾) + α (x + η δ_orig)),
    α = min(‖δ⁽ⁱ⁾‖ / (‖δ⁽ⁱ⁾‖ + ‖δ_orig‖), α_max),

overshooting by η. When the new iterate is adversarial it is remembered if
it is the closest so far and FAB steps back towards x: x⁽ⁱ⁺¹⁾ ← x + β(x⁽ⁱ⁺¹⁾ − x)
(eq. 7). AutoAttack's settings: 100 iterations, α_max 0.1, η 1.05, β 0.9;
a restart after the first starts at x + (ε/2)·t/‖t‖ (t uniform in [−1, 1]
for L∞, Gaussian for L2 and L1). FAB-T runs once per target class, the
classes with the 2nd … (targets + 1)-th largest clean logits, each on the
points still robust. A point is broken when FAB found an adversarial point
within ε; that point is returned.

Robustode's loop differs from AutoAttack's only in bookkeeping, not in the
iterates: a point leaves the batch as soon as an adversarial point within ε
is found (early stopping, like the other attacks here), and the adversarial
check of an iterate is the forward pass that also gives the next gradient,
so an iteration costs one model call, two when the iterate was adversarial
(the step back needs a fresh gradient), where AutoAttack always spends two.

Budget per run: eot_iter·(2·steps − 1) + 1 calls (the start, each iterate
and each step back, the last iterate without gradient); FAB-T adds one call
for the clean logits. Untargeted FAB differentiates all classes' logits
(one backward pass per class) at each call.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import Attack, AttackInputError, ModelMode, Oracle, require_counts, require_positive
from .eot import require_eot
from .threat import Norm, ThreatModel, lp_norm

_NOT_FOUND = math.inf
# the hyperplane projections' root finding: bisections in the input's precision, then Newton
# steps in float64 until the gain is exact to this relative error
_BISECTIONS = 10
_NEWTON_STEPS = 30
_EXACT = 1e-12


# ------------------------------------------------------------------ projections
def _orient(
    t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lower: float, upper: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The hyperplane ⟨w, z⟩ = b as "gain r ≥ 0 along v": each coordinate may move
    sign(v_i)·[0, room_i] and must gain Σ |v_i|·|d_i| = r, r = |⟨w, t⟩ − b|."""
    c = (w * t).sum(1) - b
    v = torch.where(c[:, None] > 0, -w, w)  # the direction in which ⟨w, ·⟩ moves toward b
    room = torch.where(v > 0, upper - t, t - lower).clamp_min(0)
    room = torch.where(v == 0, torch.zeros_like(room), room)
    return v, v.abs(), room, c.abs()


def _at_bounds(v: torch.Tensor, room: torch.Tensor) -> torch.Tensor:
    """Every coordinate as far as the box lets it go toward the hyperplane (the closest point of
    the box to it, taken when the hyperplane misses the box)."""
    return torch.sign(v) * room


def _solve_increasing(
    gain, slope, low: torch.Tensor, high: torch.Tensor, r: torch.Tensor, *, log: bool
) -> torch.Tensor:
    """The least p in [low, high] with gain(p) = r, for a gain that is piecewise linear,
    increasing and concave in p, with gain(low) ≤ r ≤ gain(high) (rows; ``gain(p, exact)``
    sums in float64 when ``exact``, else in the input's precision).

    Bisection narrows the bracket in the input's precision (on a log scale when it spans
    orders of magnitude), then Newton steps in float64 from its lower end finish on the exact
    piece: for a concave increasing function they never pass the root, and each lands on it
    once no kink is left between.
    """
    r_low = r.to(low.dtype)
    for _ in range(_BISECTIONS):
        mid = (low * high).sqrt() if log else (low + high) / 2
        below = gain(mid, False) < r_low
        low, high = torch.where(below, mid, low), torch.where(below, high, mid)
    p = low.double()
    for _ in range(_NEWTON_STEPS):
        missing = r - gain(p, True)
        if bool((missing <= _EXACT * r).all()):
            break
        p = p + missing.clamp_min(0) / slope(p).clamp_min(1e-300)
    return p


def project_hyperplane_box(
    norm: str,
    t: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    lower: float = 0.0,
    upper: float = 1.0,
) -> torch.Tensor:
    """The minimal-norm step d (rows) with ⟨w, t + d⟩ = b and t + d in [lower, upper]^d.

    FAB §3.1. With v the direction toward the hyperplane and u the box room
    along it, every minimiser moves coordinate i by sign(v_i)·min(·, u_i):

    - L∞: by min(δ, u_i), δ the least value whose gain Σ|v_i|·min(δ, u_i) is r;
    - L2: by min(λ|v_i|, u_i) (KKT), λ the least value whose gain reaches r;
    - L1: the coordinates with the largest |v_i| first, each to its bound,
      the last one partly (a fractional knapsack), found by sorting |v|.

    The L∞ and L2 gains are piecewise linear, increasing and concave in their
    parameter: bisection and Newton steps find it exactly without sorting the
    kinks (a sort of every row costs more than the model's gradient at FAB's
    batch sizes). When even the whole box cannot reach the hyperplane, every
    coordinate goes to its bound.
    """
    v, a, room, r = _orient(t, w, b, lower, upper)
    a64, room64, r64 = a.double(), room.double(), r.double()[:, None]
    full = (a64 * room64).sum(1, keepdim=True)
    feasible = (full >= r64).squeeze(1)
    if norm == "l1":
        order = a.argsort(1, descending=True)
        a_s, room_s = a64.gather(1, order), room64.gather(1, order)
        gain = (a_s * room_s).cumsum(1)
        j = (gain < r64).sum(1, keepdim=True).clamp(max=a.shape[1] - 1)
        before = torch.where(j > 0, gain.gather(1, (j - 1).clamp_min(0)), torch.zeros_like(r64))
        partial = (r64 - before) / a_s.gather(1, j).clamp_min(1e-300)
        position = torch.arange(a.shape[1], device=a.device)[None, :]
        moved = torch.where(position < j, room_s, torch.zeros_like(room_s))
        moved = moved.scatter(1, j, torch.minimum(partial, room_s.gather(1, j)))
        step = torch.zeros_like(moved).scatter(1, order, moved)
    elif norm == "linf":
        # gain(δ) = Σ a·min(δ, u), slope Σ_{u > δ} a; gain(0) = 0, gain(max u) = full
        def gain(p: torch.Tensor, exact: bool) -> torch.Tensor:
            if exact:
                return (a64 * torch.minimum(room64, p)).sum(1, keepdim=True)
            return (a * torch.minimum(room, p)).sum(1, keepdim=True)

        delta = _solve_increasing(
            gain,
            lambda p: (a * (room > p.to(a.dtype))).sum(1, keepdim=True).double(),
            torch.zeros_like(r)[:, None],
            room.amax(1, keepdim=True),
            torch.minimum(r64, full),
            log=False,
        )
        step = torch.minimum(delta, room64)
    else:
        # gain(λ) = Σ a·min(λa, u), slope Σ_{λa < u} a²; the unclipped λ = r/Σa² is a lower
        # bound, the largest kink u/a an upper one (every coordinate at its bound)
        squares = a64 * a64

        def gain(p: torch.Tensor, exact: bool) -> torch.Tensor:
            if exact:
                return (a64 * torch.minimum(p * a64, room64)).sum(1, keepdim=True)
            return (a * torch.minimum(p * a, room)).sum(1, keepdim=True)

        lam_low = (r64 / squares.sum(1, keepdim=True).clamp_min(1e-300)).to(a.dtype)
        kinks = torch.where(a > 0, room / a.clamp_min(1e-30), torch.zeros_like(a))
        lam_high = torch.maximum(kinks.amax(1, keepdim=True), lam_low)
        lam = _solve_increasing(
            gain,
            lambda p: (a * a * (p.to(a.dtype) * a < room)).sum(1, keepdim=True).double(),
            lam_low.clamp_min(1e-30),
            lam_high.clamp_min(1e-30),
            torch.minimum(r64, full),
            log=True,
        )
        step = torch.minimum(lam * a64, room64)
    d = (torch.sign(v).double() * step).to(t.dtype)
    d = torch.where(feasible[:, None], d, _at_bounds(v, room))
    return torch.where(r[:, None] > 0, d, torch.zeros_like(d))


# ------------------------------------------------------------------ the attack
class FAB(Attack):
    """FAB (untargeted) or, with ``targets``, FAB-T; minimal-norm, judged at ``eps``."""

    def __init__(
        self,
        norm: Norm = "linf",
        eps: float = 8 / 255,
        *,
        steps: int = 100,
        restarts: int = 1,
        targets: int | None = None,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        eot_iter: int = 1,
        early_stop: bool = True,
        seed: int = 0,
        model_mode: ModelMode = "eval",
        batch_size: int | None = None,
    ) -> None:
        super().__init__(
            ThreatModel(norm, eps), seed=seed, model_mode=model_mode, batch_size=batch_size
        )
        require_counts(steps=steps, restarts=restarts)
        require_positive(eta=eta, beta=beta)
        require_eot(eot_iter)
        if targets is not None:
            require_counts(targets=targets)
        if not (isinstance(alpha_max, int | float) and 0 <= alpha_max <= 1):
            raise AttackInputError(f"alpha_max must be in [0, 1], got {alpha_max!r}")
        if beta >= 1:
            raise AttackInputError(f"beta (the step back toward x) must be < 1, got {beta!r}")
        self.steps, self.restarts, self.targets = steps, restarts, targets
        self.alpha_max, self.eta, self.beta = float(alpha_max), float(eta), float(beta)
        self.eot_iter = eot_iter
        self.early_stop = bool(early_stop)
        self.name = "fab-t" if targets else "fab"
        self.min_classes = 2

    def budget(self) -> int:
        runs = self.restarts * (self.targets or 1)
        per_run = self.eot_iter * (2 * self.steps - 1) + 1
        return runs * per_run + (1 if self.targets else 0)

    def describe(self) -> str:
        extra = f", {self.targets} target classes" if self.targets else ""
        if self.eot_iter > 1:
            extra += f", EOT over {self.eot_iter} passes"
        return (
            f"{self.name}: {self.threat.describe()}, {self.steps} iterations, "
            f"{self.restarts} restart(s){extra}, α_max {self.alpha_max:g}, η {self.eta:g}, "
            f"β {self.beta:g}"
        )

    # ------------------------------------------------------------------ run
    def _attack(
        self,
        oracle: Oracle,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
        trace: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        n = x.shape[0]
        everyone = torch.arange(n, device=x.device)
        best_x = x.clone()
        best_dist = torch.full((n,), _NOT_FOUND, device=x.device, dtype=torch.float64)
        targets: list[torch.Tensor | None] = [None]
        if self.targets:
            with torch.no_grad():
                clean_logits = oracle(x, everyone)
            ranked = clean_logits.argsort(dim=1, descending=True)
            count = min(self.targets, clean_logits.shape[1] - 1)
            targets = [ranked[:, k] for k in range(1, count + 1)]
        for target in targets:
            for restart in range(self.restarts):
                todo = torch.nonzero(best_dist > self.threat.eps).squeeze(1)
                if not self.early_stop:
                    todo = everyone
                if todo.numel() == 0:
                    break
                t = None if target is None else target[todo]
                self._single_run(oracle, x, y, todo, t, restart > 0, generator, best_x, best_dist)
        broken = best_dist <= self.threat.eps
        x_adv = torch.where(broken.view(-1, *([1] * (x.dim() - 1))), best_x, x)
        return x_adv, None, {}

    def _random_start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x + (ε/2)·t/‖t‖ in the attack's norm, clipped to the box (AutoAttack's restarts)."""
        if self.threat.norm == "linf":
            t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
        else:
            t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        scale = lp_norm(t, self.threat.norm).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        start = x + 0.5 * self.threat.eps * t / scale
        return start.clamp(self.threat.lower, self.threat.upper)

    def _evaluate(
        self,
        oracle: Oracle,
        x1: torch.Tensor,
        index: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        gradient: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(logits, df, dg): df[:, k] = f_k − f_y and dg[:, k] its input gradient, for every
        class k (untargeted; f_y − f_y is set to +∞ so y is never chosen) or for the target
        alone; gradients averaged over ``eot_iter`` passes, logits from the last."""
        if not gradient:
            with torch.no_grad():
                return oracle(x1, index), None, None
        dg: torch.Tensor | None = None
        for _ in range(self.eot_iter):
            x_k = x1.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = oracle(x_k, index)
                own = logits.gather(1, y[:, None])
                if target is not None:
                    diffs = logits.gather(1, target[:, None]) - own
                    (g,) = torch.autograd.grad(diffs.sum(), x_k)
                    grads = g.flatten(1)[:, None, :]
                else:
                    diffs = logits - own
                    classes = logits.shape[1]
                    grads = torch.stack(
                        [
                            torch.autograd.grad(
                                diffs[:, k].sum(), x_k, retain_graph=k < classes - 1
                            )[0].flatten(1)
                            for k in range(classes)
                        ],
                        1,
                    )
            dg = grads if dg is None else dg + grads
        assert dg is not None
        if self.eot_iter > 1:
            dg = dg / self.eot_iter
        df = diffs.detach()
        if target is None:
            df = df.scatter(1, y[:, None], math.inf)
        return logits.detach(), df, dg.detach()

    def _single_run(
        self,
        oracle: Oracle,
        x_all: torch.Tensor,
        y_all: torch.Tensor,
        index: torch.Tensor,
        target: torch.Tensor | None,
        random_start: bool,
        generator: torch.Generator,
        best_x: torch.Tensor,
        best_dist: torch.Tensor,
    ) -> None:
        """One FAB run on the points ``index``; updates ``best_x``/``best_dist`` in place."""
        norm, eps = self.threat.norm, self.threat.eps
        lower, upper = self.threat.lower, self.threat.upper
        x0, y = x_all[index], y_all[index]
        x1 = self._random_start(x0, generator) if random_start else x0.clone()
        logits, df, dg = self._evaluate(oracle, x1, index, y, target, True)
        # rows follow ``live``; everything indexed by it shrinks as points are found within ε
        live = torch.arange(index.numel(), device=x0.device)
        dual = {"linf": 1, "l2": 2, "l1": math.inf}[norm]
        for i in range(self.steps):
            assert df is not None and dg is not None
            n = live.numel()
            # the nearest linearised boundary (eq. 4), in the dual norm of the gradient
            distance = df.abs() / (dg.norm(p=dual, dim=2) + 1e-12)
            k = distance.argmin(1)
            rows = torch.arange(n, device=x0.device)
            w = dg[rows, k]
            x1_flat, x0_flat = x1.flatten(1), x0[live].flatten(1)
            b = (w * x1_flat).sum(1) - df[rows, k]
            d = project_hyperplane_box(
                norm, torch.cat([x1_flat, x0_flat]), torch.cat([w, w]), torch.cat([b, b]),
                lower, upper,
            )  # fmt: skip
            d1, d2 = d[:n], d[n:]
            a1 = lp_norm(d1, norm).clamp_min(1e-8)
            a2 = lp_norm(d2, norm).clamp_min(1e-8)
            alpha = (a1 / (a1 + a2)).clamp(0, self.alpha_max)[:, None]
            moved = (1 - alpha) * (x1_flat + self.eta * d1) + alpha * (x0_flat + self.eta * d2)
            x1 = moved.clamp(lower, upper).view_as(x1)
            last = i == self.steps - 1
            logits, df, dg = self._evaluate(
                oracle, x1, index[live], y[live], _rows(target, live), not last
            )
            adv = logits.argmax(1) != y[live]
            if adv.any():
                dist = lp_norm(x1 - x0[live], norm).double()
                points = index[live]
                closer = adv & (dist < best_dist[points])
                best_x[points[closer]] = x1[closer]
                best_dist[points[closer]] = dist[closer]
                # the step back toward x (eq. 7), whose gradient the next iteration needs
                x1 = torch.where(
                    adv.view(-1, *([1] * (x1.dim() - 1))),
                    x0[live] + self.beta * (x1 - x0[live]),
                    x1,
                )
                if self.early_stop:
                    keep = best_dist[points] > eps
                    live, x1 = live[keep], x1[keep]
                    adv = adv[keep]
                    df = None if df is None else df[keep]
                    dg = None if dg is None else dg[keep]
                    if live.numel() == 0:
                        return
                if not last and adv.any():
                    back = torch.nonzero(adv).squeeze(1)
                    _, df_b, dg_b = self._evaluate(
                        oracle, x1[back], index[live[back]], y[live[back]],
                        _rows(_rows(target, live), back), True,
                    )  # fmt: skip
                    assert df is not None and dg is not None and df_b is not None
                    df, dg = df.clone(), dg.clone()
                    df[back], dg[back] = df_b, dg_b


def _rows(values: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return None if values is None else values[rows]


class FABT(FAB):
    """FAB-T: FAB against the 9 most likely wrong classes, one at a time (AutoAttack's third)."""

    def __init__(
        self, norm: Norm = "linf", eps: float = 8 / 255, *, targets: int = 9, **options: Any
    ) -> None:
        super().__init__(norm, eps, targets=targets, **options)
