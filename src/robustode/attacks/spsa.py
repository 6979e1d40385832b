"""SPSA (Uesato et al., ICML 2018): a gradient-free attack on the logit margin.

Each iteration estimates the gradient of the margin z_y − max_{j≠y} z_j at
the current point from ``samples`` Rademacher directions v,

    ĝ = mean_k [(m(x + δ·v_k) − m(x − δ·v_k)) / (2δ)] · v_k,

takes one Adam step (lr) that lowers the margin, and projects onto the ε-ball
and the box. The current point is checked every iteration (one extra call) so
the best adversarial is returned and broken points stop being attacked.

Batching (``per_image``). By default all images of the batch and all their
samples go through the model together (``max_batch_size`` bounds one forward
pass). On a batch-dependent model — an adaptive ODE solver with one step grid
for the whole batch — a probe's logits then depend on the other images' probes,
so image i's result depends on which images it is attacked with. With
``per_image=True`` every image is attacked on its own, as the SONet reference
did: its clean check, its probes, its current points and its final verdict go
through the model without any other image, and its random directions come from
its own stream seeded with ``seed`` (so its result is a function of the image,
the model and the seed, whatever batch it came in). ``"auto"`` (default) does so
when some solve site of the model has batch-shared adaptive step control
(:func:`~robustode.attacks.adaptive.batch_shared_step_control`); the audit also
turns it on when its batch-composition check sees outputs move.

One image's 2·samples probes still go through the model together by default,
as in the reference, and on such a model they share one step grid: a probe's
logits depend on its fellow probes (the same image ± δ·v), so ĝ estimates the
gradient of the probe batch's function rather than of the image-alone model the
final verdict uses (docs/attacks.md gives the size of the effect).
``probes_together=False`` sends every probe through the model alone — the
single-image model exactly, at 2·samples passes per estimate.

Budget: iterations × (2·samples + 1) + 1 model calls per point.
SONet's setting (docs/references.md): ε 8/255, 20 iterations, 32 samples, δ 0.01, lr 0.01.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .adaptive import batch_shared_step_control
from .base import (
    Attack,
    AttackInputError,
    AttackResult,
    BestIterate,
    ModelMode,
    Oracle,
    check_inputs,
    concat_results,
    require_counts,
    require_positive,
)
from .losses import cw_margin
from .threat import ThreatModel


class SPSA(Attack):
    name = "spsa"

    def __init__(
        self,
        eps: float = 8 / 255,
        *,
        iterations: int = 20,
        samples: int = 32,
        delta: float = 0.01,
        lr: float = 0.01,
        max_batch_size: int = 4096,
        early_stop: bool = True,
        seed: int = 0,
        model_mode: ModelMode = "eval",
        batch_size: int | None = None,
        per_image: bool | str = "auto",
        probes_together: bool = True,
    ) -> None:
        super().__init__(
            ThreatModel("linf", eps), seed=seed, model_mode=model_mode, batch_size=batch_size
        )
        if not (isinstance(per_image, bool) or per_image == "auto"):
            raise AttackInputError(f"per_image must be true, false or 'auto', got {per_image!r}")
        self.per_image = per_image
        if not isinstance(probes_together, bool):
            raise AttackInputError(
                f"probes_together must be true or false, got {probes_together!r}"
            )
        self.probes_together = probes_together
        require_counts(iterations=iterations, samples=samples)
        require_positive(delta=delta, lr=lr)
        if max_batch_size < 2 * samples:
            raise AttackInputError(
                f"max_batch_size ({max_batch_size}) must hold at least one image's "
                f"2·samples = {2 * samples} evaluations"
            )
        self.iterations, self.samples = iterations, samples
        self.delta, self.lr = delta, lr
        self.max_batch_size = max_batch_size
        self.early_stop = early_stop

    def budget(self) -> int:
        return self.iterations * (2 * self.samples + 1) + 1

    def describe(self) -> str:
        return (
            f"spsa: {self.threat.describe()}, {self.iterations} iterations × {self.samples} "
            f"samples, δ {self.delta:g}, lr {self.lr:g}, per image {self.per_image}"
            + ("" if self.probes_together else ", every probe alone")
        )

    def queries_one_image_at_a_time(self, model: nn.Module) -> bool:
        """What ``per_image`` means for ``model``: True, False, or for ``"auto"`` whether the
        model has batch-shared adaptive step control."""
        if self.per_image == "auto":
            return batch_shared_step_control(model)
        return bool(self.per_image)

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, trace: bool = False
    ) -> AttackResult:
        if not self.queries_one_image_at_a_time(model):
            return super().run(model, x, y, trace=trace)
        check_inputs(x, y, self.threat, model)
        # Each image a run of its own: its own chunk (clean check, oracle calls and final
        # verdict without other images) and its own random stream and model RNG from seed.
        parts = [
            super(SPSA, self).run(model, x[i : i + 1], y[i : i + 1], trace=trace)
            for i in range(x.shape[0])
        ]
        return concat_results(parts, x, y)

    @torch.no_grad()
    def _gradient_estimate(self, oracle, x, y, index, generator) -> torch.Tensor:
        """ĝ for every point of ``x`` (rows = points ``index``), chunked to ``max_batch_size``."""
        per_chunk = max(self.max_batch_size // (2 * self.samples), 1)
        grads = []
        for start in range(0, x.shape[0], per_chunk):
            xs, ys = x[start : start + per_chunk], y[start : start + per_chunk]
            m = xs.shape[0]
            signs = torch.randint(
                0, 2, (m, self.samples, *xs.shape[1:]), generator=generator, device=x.device
            )
            v = (2 * signs - 1).to(xs.dtype)
            probes = xs[:, None] + self.delta * torch.cat([v, -v], dim=1)  # (m, 2S, …)
            flat, rows = probes.flatten(0, 1), index[start : start + per_chunk]
            if self.probes_together:
                logits = oracle(flat, rows, 2 * self.samples)
            else:  # every probe a model call of its own (no probe shares another's solve)
                owners = rows.repeat_interleave(2 * self.samples)
                logits = torch.cat(
                    [oracle(flat[j : j + 1], owners[j : j + 1]) for j in range(flat.shape[0])]
                )
            margins = -cw_margin(logits, ys.repeat_interleave(2 * self.samples))
            margins = margins.view(m, 2, self.samples)
            diff = (margins[:, 0] - margins[:, 1]) / (2 * self.delta)  # (m, S)
            shape = (m, self.samples) + (1,) * (xs.dim() - 1)
            grads.append((diff.view(shape) * v).mean(1))
        return torch.cat(grads)

    def _attack(
        self,
        oracle: Oracle,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
        trace: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        n = x.shape[0]
        delta = torch.zeros_like(x, requires_grad=True)
        optimiser = torch.optim.Adam([delta], lr=self.lr)
        best = BestIterate(x)  # loss = −margin: adversarial first, then the lowest margin
        loss_trace = torch.full((self.iterations + 1, n), float("nan"), device=x.device)
        everyone = torch.arange(n, device=x.device)
        for k in range(self.iterations + 1):
            active = torch.nonzero(~best.adv).squeeze(1) if self.early_stop else everyone
            if active.numel() == 0:
                break
            with torch.no_grad():
                x_cur = x[active] + delta.detach()[active]
                margin = -cw_margin(oracle(x_cur, active), y[active])
                loss_trace[k, active] = -margin.float()
                adv = margin < 0
                best.update(active, x_cur, adv, -margin)
                if self.early_stop:
                    active, x_cur = active[~adv], x_cur[~adv]
                if active.numel() == 0 or k == self.iterations:
                    break
                grad = torch.zeros_like(x)
                grad[active] = self._gradient_estimate(oracle, x_cur, y[active], active, generator)
            delta.grad = grad
            optimiser.step()
            with torch.no_grad():
                delta.copy_(self.threat.project_delta(delta, x))
        return best.x, (loss_trace if trace else None), {}
