"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): random search with square
updates, in L∞, L2 and L1 as AutoAttack runs it.

Each query changes one square window of side s per image and keeps the
change only if the margin z_y − max_{j≠y} z_j drops (or the point becomes
misclassified). The window's area fraction p starts at ``p_init`` and is
halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000
(Square paper §3.1 / Algorithm 1). ``schedule`` says what those iteration
numbers count:

- ``"autoattack"`` (default): iterations as they are — how AutoAttack builds
  Square (``resc_schedule=False``): with 5000 queries p stops at p_init/128;
- ``"rescaled"``: the iteration scaled to a 10 000-query run first
  (``⌊i/queries·10000⌋``), as the Square paper's own code and torchattacks
  do by default: any budget runs through every halving, so the last
  windows of a 5000-query run are 4 times smaller than AutoAttack's. It
  breaks more points at small budgets, but it is not AutoAttack's Square.

Updates (Square paper §3–4):

- **L∞**: start from vertical stripes of ±ε; a query sets one window of
  each image to x ± ε (one sign per channel).
- **L2**: start from a 5×5 grid of tiles, each a "double-pyramid" pattern
  (concentric rectangles of weight 1/(k+1)², + in one half, − in the
  other, a random orientation) with a random sign per channel, scaled to
  ‖δ‖₂ = ε. A query draws two windows: the mass of the second moves into
  the first (plus the unused budget ε² − ‖δ‖² spread over the channels),
  with a fresh pattern and signs added to the first's old content; δ is
  then rescaled to norm ε.
- **L1**: the same with weights 1/(k+1)⁴ and L1 norms; the start and every
  proposal are projected onto the L1 ball ∩ box at radius ε·(1 − 10⁻⁶)
  instead of being rescaled (as AutoAttack runs Square-L1).

Windows, patterns and signs are drawn per image and applied by gather and
scatter of the window's pixels, so the whole batch moves in one forward
pass per query without a per-image Python loop (AutoAttack places the
window at one spot for the whole batch). Only points still classified
correctly are queried. Budget: ``queries`` calls per point.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import Attack, AttackInputError, ModelMode, Oracle, require_counts
from .losses import cw_margin
from .threat import Norm, ThreatModel, project_l1_box

# (last iteration of the stage, divisor of p_init), then p_init/512
_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
             (6000, 128), (8000, 256))  # fmt: skip
SCHEDULES = ("autoattack", "rescaled")
_L1_SHRINK = 1 - 1e-6  # AutoAttack projects Square-L1's points onto a ball this much smaller


def square_fraction(p_init: float, iteration: int, queries: int, *, rescale: bool = False) -> float:
    """The window's area fraction at ``iteration`` (0-based): p_init halved at iterations 10, 50,
    200, … of the Square schedule; with ``rescale`` the iteration is first mapped onto a
    10 000-query run."""
    point = int(iteration / queries * 10000) if rescale else iteration
    divisor = 512
    for bound, d in _SCHEDULE:
        if point <= bound:
            divisor = d
            break
    return p_init / divisor


def square_pattern(size: int, power: int) -> torch.Tensor:
    """Square's window pattern of side ``size``: in each half, concentric rectangles of weight
    1/(k+1)^power around the half's centre, positive in the top half and negative in the
    bottom one; each half and then the whole normalised to unit L2 (power 2) or L1 (power 4)
    norm."""

    def unit(t: torch.Tensor) -> torch.Tensor:
        scale = t.norm() if power == 2 else t.abs().sum()
        return t / scale if scale > 0 else t

    def half(rows: int, cols: int) -> torch.Tensor:
        out = torch.zeros(rows, cols, dtype=torch.float64)
        if rows == 0:
            return out
        top, left = rows // 2, cols // 2
        for k in range(max(top, left) + 1):
            # rectangle k: rows top−k … top+k, columns left−k … left+k, clipped to the half
            rows_k = slice(max(top - k, 0), min(top + k + 1, rows))
            cols_k = slice(max(left - k, 0), min(left + k + 1, cols))
            out[rows_k, cols_k] += 1.0 / (k + 1) ** power
        return unit(out)

    pattern = torch.cat([half(size // 2, size), -half(size - size // 2, size)])
    return unit(pattern).float()


class Square(Attack):
    name = "square"

    def __init__(
        self,
        eps: float = 8 / 255,
        *,
        norm: Norm = "linf",
        queries: int = 5000,
        p_init: float = 0.8,
        schedule: str = "autoattack",
        seed: int = 0,
        model_mode: ModelMode = "eval",
        batch_size: int | None = None,
    ) -> None:
        super().__init__(
            ThreatModel(norm, eps), seed=seed, model_mode=model_mode, batch_size=batch_size
        )
        require_counts(queries=queries)
        if not 0 < p_init <= 1:
            raise AttackInputError(f"p_init must be in (0, 1], got {p_init!r}")
        if schedule not in SCHEDULES:
            raise AttackInputError(
                f"Square's schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}"
            )
        self.queries, self.p_init, self.schedule = queries, p_init, schedule

    def budget(self) -> int:
        return self.queries

    def describe(self) -> str:
        return (
            f"square: {self.threat.describe()}, {self.queries} queries, p_init {self.p_init:g}, "
            f"{self.schedule} schedule"
        )

    def _fraction(self, iteration: int) -> float:
        return square_fraction(
            self.p_init, iteration, self.queries, rescale=self.schedule == "rescaled"
        )

    def _signs(self, shape, generator, device) -> torch.Tensor:
        return 2 * torch.randint(0, 2, shape, generator=generator, device=device) - 1

    @torch.no_grad()
    def _attack(
        self,
        oracle: Oracle,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
        trace: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        if x.dim() != 4:
            raise AttackInputError(f"square needs images (N, C, H, W), got shape {tuple(x.shape)}")
        n = x.shape[0]
        x_best = self._init(x, generator)
        everyone = torch.arange(n, device=x.device)
        logits = oracle(x_best, everyone)
        margin = -cw_margin(logits, y)
        adv = logits.argmax(1) != y
        loss_trace = torch.full((self.queries, n), float("nan"), device=x.device) if trace else None
        if loss_trace is not None:
            loss_trace[0] = -margin
        propose = self._propose_linf if self.threat.norm == "linf" else self._propose_lp
        for query in range(1, self.queries):
            idx = torch.nonzero(~adv).squeeze(1)
            if idx.numel() == 0:
                break
            p = self._fraction(query - 1)  # AutoAttack counts from 0
            x_new = propose(x[idx], x_best[idx], p, generator)
            logits = oracle(x_new, idx)
            margin_new = -cw_margin(logits, y[idx])
            if loss_trace is not None:
                loss_trace[query, idx] = -margin_new
            improved = margin_new < margin[idx]
            chosen = idx[improved]
            x_best[chosen] = x_new[improved]
            margin[chosen] = margin_new[improved]
            adv[chosen] = logits.argmax(1)[improved] != y[chosen]
        return x_best, loss_trace, {}

    # ------------------------------------------------------------- starts
    def _init(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        eps = self.threat.eps
        if self.threat.norm == "linf":
            stripes = self._signs((n, c, 1, w), generator, x.device).to(x.dtype)
            return (x + eps * stripes).clamp(0, 1)
        power = 2 if self.threat.norm == "l2" else 4
        delta = torch.zeros_like(x)
        s = max(h // 5, 1)
        offset = max((h - 5 * s) // 2, 0)  # AutoAttack: a 5×5 grid centred (h ≥ 5)
        pattern = square_pattern(s, power).to(x.device, x.dtype)
        for row in range(h // s):
            for col in range(w // s):
                top, left = offset + row * s, offset + col * s
                if top + s > h or left + s > w:
                    continue
                tile = self._oriented(pattern, n, generator)  # (n, s, s)
                signs = self._signs((n, c, 1, 1), generator, x.device).to(x.dtype)
                delta[:, :, top : top + s, left : left + s] += tile[:, None] * signs
        return self._finish(x, delta)

    def _oriented(self, pattern: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """The pattern, transposed for a random half of the images (Square's random orientation)."""
        flip = torch.rand(n, generator=generator, device=pattern.device) > 0.5
        return torch.where(flip[:, None, None], pattern.t()[None], pattern[None])

    def _finish(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """δ made a point of the threat model: rescaled to ‖δ‖₂ = ε and clipped (L2), or
        projected onto the L1 ball ∩ box at ε·(1 − 10⁻⁶) (L1)."""
        eps = self.threat.eps
        if self.threat.norm == "l2":
            norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            return (x + delta / (norm + 1e-12) * eps).clamp(0, 1)
        return x + project_l1_box(delta, -x, 1 - x, eps * _L1_SHRINK)

    # ---------------------------------------------------------- proposals
    def _window(
        self, m: int, h: int, w: int, s: int, generator: torch.Generator, device, exclusive: bool
    ) -> torch.Tensor:
        """Flat pixel indices (m, s²) of one s×s window per image at a random position."""
        span_h, span_w = (max(h - s, 1), max(w - s, 1)) if exclusive else (h - s + 1, w - s + 1)
        vh = torch.randint(0, span_h, (m, 1, 1), generator=generator, device=device)
        vw = torch.randint(0, span_w, (m, 1, 1), generator=generator, device=device)
        offsets = torch.arange(s, device=device)
        return ((vh + offsets.view(1, s, 1)) * w + vw + offsets.view(1, 1, s)).flatten(1)

    def _propose_linf(
        self, x: torch.Tensor, x_best: torch.Tensor, p: float, generator: torch.Generator
    ) -> torch.Tensor:
        m, c, h, w = x.shape
        eps = self.threat.eps
        s = min(max(round(math.sqrt(p * h * w)), 1), min(h, w) - 1)
        window = self._window(m, h, w, s, generator, x.device, exclusive=False)
        # gathered per channel: all the work below touches c·s² values per image, not c·h·w
        window = window[:, None, :].expand(m, c, s * s)
        cur_window = x.flatten(2).gather(2, window)
        best_window = x_best.flatten(2).gather(2, window)
        values = eps * self._signs((m, c, 1), generator, x.device).to(x.dtype)
        proposal = (cur_window + values).clamp(0, 1)
        # re-draw signs for images whose window would not change (the original's loop)
        for _ in range(10):
            unchanged = ((proposal - best_window).abs() < 1e-7).flatten(1).all(1)
            if not unchanged.any():
                break
            redraw = eps * self._signs((m, c, 1), generator, x.device).to(x.dtype)
            values = torch.where(unchanged.view(-1, 1, 1), redraw, values)
            proposal = (cur_window + values).clamp(0, 1)
        return x_best.flatten(2).scatter(2, window, proposal).view_as(x)

    def _propose_lp(
        self, x: torch.Tensor, x_best: torch.Tensor, p: float, generator: torch.Generator
    ) -> torch.Tensor:
        """One L2 or L1 proposal per image: move the mass of a second window into a first."""
        m, c, h, w = x.shape
        l2 = self.threat.norm == "l2"
        eps = self.threat.eps
        s = max(round(math.sqrt(p * h * w)), 3)
        s = min(s + 1 if s % 2 == 0 else s, min(h, w))
        # AutoAttack draws window corners in [0, h − s) (the last position is never drawn)
        first = self._window(m, h, w, s, generator, x.device, exclusive=True)
        second = self._window(m, h, w, s, generator, x.device, exclusive=True)
        delta = (x_best - x).flatten(2)  # (m, c, h·w)
        union = torch.zeros(m, h * w, device=x.device, dtype=x.dtype)
        union.scatter_(1, first, 1.0).scatter_(1, second, 1.0)
        index1 = first[:, None, :].expand(m, c, s * s)
        index2 = second[:, None, :].expand(m, c, s * s)
        old = delta.gather(2, index1)

        def norm(t: torch.Tensor) -> torch.Tensor:  # per (image, channel) over the last dim
            return t.norm(dim=-1, keepdim=True) if l2 else t.abs().sum(-1, keepdim=True)

        in_windows = norm(delta * union[:, None, :])  # (m, c, 1)
        image = (delta.flatten(1).norm(dim=1) if l2 else delta.flatten(1).abs().sum(1)).view(
            m, 1, 1
        )
        pattern = self._oriented(
            square_pattern(s, 2 if l2 else 4).to(x.device, x.dtype), m, generator
        )
        signs = self._signs((m, c, 1), generator, x.device).to(x.dtype)
        new = pattern.flatten(1)[:, None, :] * signs + old / (norm(old) + 1e-12)
        if l2:
            budget = ((eps**2 - image**2).clamp_min(0) / c + in_windows**2).sqrt()
        else:
            budget = ((eps - image).clamp_min(0) / c + in_windows) * c
        new = new / (norm(new) + 1e-12) * budget
        delta = delta.scatter(2, index2, 0.0).scatter(2, index1, new).view_as(x)
        return self._finish(x, delta)
