"""Square Attack, L∞ (Andriushchenko et al., ECCV 2020): random search with square updates.

Start from vertical stripes of ±ε; at each query, re-draw one square window
of side s (per image, per channel ±ε) and keep the change only if the margin
z_y − max_{j≠y} z_j drops. The window's area fraction p starts at ``p_init``
and is halved on AutoAttack's schedule (iterations 10, 50, 200, 500, 1000,
2000, 4000, 6000, 8000 of 10 000, rescaled to the query budget). Only points
still classified correctly are queried. Budget: ``queries`` calls per point.

Windows and signs are drawn per image and applied by gather/scatter of the
window's pixels, so the whole batch moves in one forward pass per query with
no per-image Python loop and no full-image masks.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import Attack, AttackInputError, ModelMode, Oracle, require_counts
from .losses import cw_margin
from .threat import ThreatModel

_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
             (6000, 128), (8000, 256))  # fmt: skip


def square_fraction(p_init: float, query: int, queries: int) -> float:
    """The window's area fraction at ``query`` (the schedule is defined on 10 000 queries)."""
    rescaled = int(query / queries * 10000)
    divisor = 512
    for bound, d in _SCHEDULE:
        if rescaled <= bound:
            divisor = d
            break
    return p_init / divisor


class Square(Attack):
    name = "square"

    def __init__(
        self,
        eps: float = 8 / 255,
        *,
        queries: int = 5000,
        p_init: float = 0.8,
        seed: int = 0,
        model_mode: ModelMode = "eval",
        batch_size: int | None = None,
    ) -> None:
        super().__init__(
            ThreatModel("linf", eps), seed=seed, model_mode=model_mode, batch_size=batch_size
        )
        require_counts(queries=queries)
        if not 0 < p_init <= 1:
            raise AttackInputError(f"p_init must be in (0, 1], got {p_init!r}")
        self.queries, self.p_init = queries, p_init

    def budget(self) -> int:
        return self.queries

    def describe(self) -> str:
        return f"square: {self.threat.describe()}, {self.queries} queries, p_init {self.p_init:g}"

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
        n, c, h, w = x.shape
        eps = self.threat.eps
        stripes = self._signs((n, c, 1, w), generator, x.device).to(x.dtype)
        x_best = (x + eps * stripes).clamp(0, 1)
        everyone = torch.arange(n, device=x.device)
        logits = oracle(x_best, everyone)
        margin = -cw_margin(logits, y)
        adv = logits.argmax(1) != y
        loss_trace = torch.full((self.queries, n), float("nan"), device=x.device) if trace else None
        if loss_trace is not None:
            loss_trace[0] = -margin
        for query in range(1, self.queries):
            idx = torch.nonzero(~adv).squeeze(1)
            if idx.numel() == 0:
                break
            m = idx.numel()
            x_cur, x_best_cur = x[idx], x_best[idx]
            p = square_fraction(self.p_init, query - 1, self.queries)  # AutoAttack counts from 0
            s = min(max(round(math.sqrt(p * h * w)), 1), min(h, w) - 1)
            vh = torch.randint(0, h - s + 1, (m, 1, 1), generator=generator, device=x.device)
            vw = torch.randint(0, w - s + 1, (m, 1, 1), generator=generator, device=x.device)
            offsets = torch.arange(s, device=x.device)
            # flat pixel indices of each image's window, gathered per channel: all the work
            # below touches c·s² values per image, not c·h·w
            window = ((vh + offsets.view(1, s, 1)) * w + vw + offsets.view(1, 1, s)).flatten(1)
            window = window[:, None, :].expand(m, c, s * s)
            cur_window = x_cur.flatten(2).gather(2, window)
            best_window = x_best_cur.flatten(2).gather(2, window)
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
            x_new = x_best_cur.flatten(2).scatter(2, window, proposal).view_as(x_cur)
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
