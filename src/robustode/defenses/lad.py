"""Layer-wise adversarial defense, LAD and LAD-SM (LAD §3, appendices A–B).

LAD: Yang, Liu, Bao and Shi, *Layer-wise Adversarial Defense: An ODE
Perspective* (ICLR 2021 submission; docs/references.md).

The perturbation points of a model (:mod:`robustode.nn.perturbation`) are the
states x_0, x_1, …, x_N of the discrete ODE x_{n+1} = x_n + f_n(x_n): x_0 is
the first point in forward order (the stem's output in robustode's models),
x_{n+1} the output of block n. Two passes (appendix B.2):

1. forward at the (possibly adversarial) input, recording every point's
   activation; g_n = ∂L/∂x_n by ``torch.autograd.grad`` (no parameter
   gradients), detached. L is the **batch-mean** cross-entropy.
2. forward again with an offset added at every point (:func:`lad_offsets`,
   eq. 5; :func:`lad_sm_offsets`, eq. 8), and the loss of that pass.

η's scale follows the loss reduction: with the batch mean, g_n carries a
factor 1/B, so η·g_n per sample scales as η/B. The paper's η = 50 (CIFAR-10)
and 1000 (CIFAR-100) are for B = 128; at another batch size B' use η·B'/128
for the same per-sample offsets. η is meant for the **global** batch: under
DDP each of W processes takes the mean over its own B/W images, so its g_n is
W times the global batch's, and the defense divides η by W — the offsets are
those one process computes on the whole batch.

``eq16_ratio`` (LAD §4.5, eq. 16) is ‖x(0) + f(x(0), 0)‖₂ / ‖∂L/∂x(0)‖₂, with
x(0) the first perturbation point (the stem's output), x(0) + f(x(0), 0) the
second (the first block's output) and L pass 1's batch-mean loss, norms over
the whole batch; :func:`eq16_ratio` measures it for any model (the trainer's
``trace_eq16`` records it every epoch for every defense, LAD or not).

Composition (appendix B.2), with x' the base defense's input:

- ``natural``: x' = x; loss L_LAD(f(x), y).
- ``pgd_at``:  x' = PGD(x) (L∞-bounded, as Madry); loss L_LAD(f(x'), y).
- ``trades``:  x' = TRADES' attack; loss γ·CE(f(x), y) + (1 − γ)·L_LAD(f(x'), y)
  + β·Σ KL(f(x) ‖ f(x'))/B, with f(x') of the KL term unperturbed (pass 1's).

Pass 1 and pass 2 both run in the caller's mode (train mode in the trainer),
so batch-norm running statistics see the batch in both passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.perturbation import perturbed
from . import options as opt
from .adversarial import (
    TradesAttack,
    TrainingAttack,
    eval_correct,
    make_pgd_attack,
    make_trades_attack,
    trades_kl,
)
from .base import DefenseConfigError, Stats, correct, register_defense, to_stats

BASES = ("natural", "pgd_at", "trades")
SCHEMES = ("lie_trotter", "strang_marchuk")

# LAD B.1: "for other hyperparameters, we follow the settings in the PGD training experiments".
_ATTACK_DEFAULTS: dict[str, Any] = {
    "eps": 8 / 255,
    "step_size": 2 / 255,
    "steps": 10,
    "random_start": True,
    "attack_mode": "eval",
}
_TRADES_DEFAULTS: dict[str, Any] = {"beta": 6.0, "gamma": 0.5}  # λ = 1/6, γ = 1/2 (B.1)
_BASE_OPTIONS: dict[str, tuple[str, ...]] = {
    "natural": (),
    "pgd_at": ("eps", "step_size", "steps", "random_start", "attack_mode"),
    "trades": ("eps", "step_size", "steps", "attack_mode", "beta", "gamma"),
}


def lad_offsets(grads: Sequence[torch.Tensor], eta: float) -> list[torch.Tensor]:
    """LAD (eq. 5, Lie–Trotter splitting, eq. 19): every state x_n gets η·g_n.

    eq. 5 perturbs each block output x_{n+1} by η·∂L/∂x_{n+1} and the first
    state x_0 by Δx_0 of eq. 4, which with M = 1 is also η·∂L/∂x_0.
    """
    return [eta * g for g in grads]


def lad_sm_offsets(grads: Sequence[torch.Tensor], eta: float) -> list[torch.Tensor]:
    """LAD-SM (eq. 8, Strang–Marchuk splitting) folded onto the points x_0 … x_N.

    Per block n: x̃_n = x_n + (η/2)·g_n enters the block (its skip path too),
    x̂_n = x̃_n + f_n(x̃_n), and x_{n+1} = x̂_n + (η/4)·(g_n + g_{n+1}) — the
    midpoint gradient a(n + ½) estimated by (g_n + g_{n+1})/2 (appendix A.2).
    A point is both the output of block n − 1 and the input of block n, so
    it receives the post-step of the one and the pre-step of the other:

    - x_0 (first point, no block before it): (η/2)·g_0;
    - x_n, 0 < n < N: (η/4)·g_{n−1} + (3η/4)·g_n;
    - x_N (last point, no block after it): (η/4)·(g_{N−1} + g_N).

    **Shape rule.** Where g_{n−1} and g_n differ in shape (a stage transition:
    stride, width), g_{n−1} lives in another space and cannot be averaged
    with g_n; the midpoint gradient is then estimated by g_n alone, so the
    post-step adds (η/2)·g_n: x_n gets η·g_n — exactly LAD's offset — and the
    last point (η/2)·g_N. This needs no knowledge of the block's shortcut, so
    it holds for every model, ODE blocks included.
    """
    if len(grads) < 2:
        raise DefenseConfigError(
            "lad_sm needs at least two perturbation points (the states before and after a "
            f"block); the model has {len(grads)}"
        )
    last = len(grads) - 1
    offsets = []
    for n, g in enumerate(grads):
        total = 0.5 * eta * g if n < last else torch.zeros_like(g)  # pre-step of block n
        if n > 0:  # post-step of block n − 1
            prev = grads[n - 1]
            total = total + (0.25 * eta * (prev + g) if prev.shape == g.shape else 0.5 * eta * g)
        offsets.append(total)
    return offsets


def record_point_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    retain_graph: bool = False,
    defense: str = "lad",
) -> tuple[torch.Tensor, list[str], list[torch.Tensor], list[torch.Tensor]]:
    """LAD's pass 1: (logits, point names in forward order, activations, g_n = ∂L/∂x_n).

    L is the batch-mean cross-entropy. Gradients come from
    ``torch.autograd.grad`` on the activations only — no parameter's ``.grad``
    is touched — and are detached. A perturbation already in effect (noise)
    acts first; the activations are recorded after it. ``retain_graph`` keeps
    the forward graph for a caller that also back-propagates through the
    logits (LAD with TRADES reuses them in the KL term).
    """
    opt.require_points(defense, model)
    names: list[str] = []
    acts: list[torch.Tensor] = []

    def keep(name: str, h: torch.Tensor) -> torch.Tensor:
        if name in names:
            raise DefenseConfigError(
                f"{defense}: perturbation point '{name}' was reached twice in one forward pass; "
                "every point must be one state of the network"
            )
        names.append(name)
        acts.append(h)
        return h

    with torch.enable_grad(), perturbed(model, keep, after_enclosing=True):
        logits = model(x)
    loss = F.cross_entropy(logits, y)
    grads = torch.autograd.grad(loss, acts, retain_graph=retain_graph, allow_unused=True)
    grads_out = [
        torch.zeros_like(a) if g is None else g.detach() for a, g in zip(acts, grads, strict=True)
    ]
    return logits, names, acts, grads_out


def world_size() -> int:
    """The number of processes of a torch.distributed job (1 outside one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def eq16_from_pass(acts: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """LAD eq. 16 from pass 1's activations and gradients (points in forward order)."""
    if len(acts) < 2:
        return torch.tensor(float("nan"))
    return _norm(acts[1:2]) / _norm(grads[:1]).clamp_min(1e-30)


def eq16_ratio(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """LAD eq. 16 for ``model`` on (x, y): ‖x_1‖₂ / ‖∂L/∂x_0‖₂ with the batch-mean
    cross-entropy, in the model's current mode; no parameter gradient is touched."""
    _, _, acts, grads = record_point_gradients(model, x, y, defense="eq16_ratio")
    return float(eq16_from_pass(acts, grads))


def forward_with_offsets(
    model: nn.Module, x: torch.Tensor, offsets: dict[str, torch.Tensor]
) -> torch.Tensor:
    """LAD's pass 2: logits with ``offsets[name]`` added at each point (after enclosing noise)."""

    def shift(name: str, h: torch.Tensor) -> torch.Tensor:
        return h + offsets[name]

    with perturbed(model, shift, after_enclosing=True):
        return model(x)


class LayerwiseAdversarialDefense:
    """LAD (eq. 5) or LAD-SM (eq. 8) on top of natural training, PGD-AT or TRADES (appendix B.2).

    Stats: ``loss``, ``train_correct`` (clean predictions; an eval-mode,
    gradient-free forward for ``pgd_at``), ``adv_correct`` (x', pass 1),
    ``ce`` (pass 1: unperturbed hidden layers), ``lad_ce`` (pass 2), ``kl``
    (TRADES), ``offset_ratio`` = ‖offsets‖₂ / ‖activations‖₂ over all points, and
    ``eq16_ratio`` (LAD eq. 16, on pass 1's input: see the module docstring).
    """

    def __init__(
        self,
        *,
        scheme: str,
        eta: float,
        base: str,
        attack: TrainingAttack | None = None,
        beta: float = 0.0,
        gamma: float = 0.0,
    ) -> None:
        self.scheme = scheme
        self.name = "lad" if scheme == "lie_trotter" else "lad_sm"
        self.eta = eta
        self.base = base
        self.attack = attack
        self.beta = beta
        self.gamma = gamma
        self._offsets: Callable[[Sequence[torch.Tensor], float], list[torch.Tensor]] = (
            lad_offsets if scheme == "lie_trotter" else lad_sm_offsets
        )

    def offsets(self, grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The offset added at each point, from the gradients g_0 … g_N in forward order
        (η follows the global batch under DDP: see the module docstring)."""
        return self._offsets(grads, self.eta / world_size())

    def adversarial_examples(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """x': the input both passes run on (x itself for the natural base)."""
        if self.attack is None:
            return x
        return self.attack.perturb(model, x, y)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, Stats]:
        opt.require_points(self.name, model)
        x_in = self.adversarial_examples(model, x, y)
        logits_nat = model(x) if self.base == "trades" else None
        logits1, names, acts, grads = record_point_gradients(
            model, x_in, y, retain_graph=self.base == "trades", defense=self.name
        )
        offsets = self.offsets(grads)
        logits2 = forward_with_offsets(model, x_in, dict(zip(names, offsets, strict=True)))
        lad_ce = F.cross_entropy(logits2, y)
        with torch.no_grad():
            ce = F.cross_entropy(logits1, y)
            ratio = _norm(offsets) / _norm(acts).clamp_min(1e-12)
            eq16 = eq16_from_pass(acts, grads)
        stats: dict[str, torch.Tensor] = {
            "ce": ce,
            "lad_ce": lad_ce,
            "offset_ratio": ratio,
            "eq16_ratio": eq16,
        }
        if self.base == "natural":
            loss = lad_ce
            stats["train_correct"] = correct(logits1, y)
        elif self.base == "pgd_at":
            loss = lad_ce
            stats["train_correct"] = eval_correct(model, x, y)
            stats["adv_correct"] = correct(logits1, y)
        else:
            assert logits_nat is not None
            kl = trades_kl(logits_nat, logits1)
            ce_nat = F.cross_entropy(logits_nat, y)
            loss = self.gamma * ce_nat + (1 - self.gamma) * lad_ce + self.beta * kl
            stats["train_correct"] = correct(logits_nat, y)
            stats["adv_correct"] = correct(logits1, y)
            stats["kl"] = kl
        stats["loss"] = loss
        return loss, to_stats(stats)

    def __repr__(self) -> str:
        extra = ""
        if self.attack is not None:
            extra = f", {self.attack.describe()}"
        if self.base == "trades":
            extra += f", β={self.beta:g}, γ={self.gamma:g}"
        return f"{type(self).__name__}({self.name}, η={self.eta:g}, base={self.base}{extra})"


def _norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum(t.detach().float().pow(2).sum() for t in tensors))  # type: ignore[arg-type]


def paper_eta(eta: float | None, data: str | None) -> float:
    """``eta`` as given, else the paper's for the data (LAD §4.5, Table 5): 1000 on CIFAR-100,
    50 otherwise."""
    if eta is not None:
        return eta
    return 1000.0 if (data or "").startswith("cifar100") else 50.0


def _build(scheme: str, defense: str, base: str, eta: Any, given: dict[str, Any]) -> Any:
    base = opt.choice(defense, "base", base, BASES)
    eta = opt.non_negative(defense, "eta", eta)
    stray = [k for k, v in given.items() if v is not None and k not in _BASE_OPTIONS[base]]
    if stray:
        used = ", ".join(_BASE_OPTIONS[base]) or "none"
        raise DefenseConfigError(
            f"{defense}: option {', '.join(map(repr, stray))} has no effect with base='{base}' "
            f"(that base takes: {used})"
        )
    values = {**_ATTACK_DEFAULTS, **_TRADES_DEFAULTS}
    values.update({k: v for k, v in given.items() if v is not None})
    if base == "natural":
        return LayerwiseAdversarialDefense(scheme=scheme, eta=eta, base=base)
    if base == "pgd_at":
        attack: TrainingAttack = make_pgd_attack(
            defense,
            values["eps"],
            values["step_size"],
            values["steps"],
            values["random_start"],
            values["attack_mode"],
        )
        return LayerwiseAdversarialDefense(scheme=scheme, eta=eta, base=base, attack=attack)
    trades_attack: TradesAttack = make_trades_attack(
        defense, values["eps"], values["step_size"], values["steps"], values["attack_mode"]
    )
    return LayerwiseAdversarialDefense(
        scheme=scheme,
        eta=eta,
        base=base,
        attack=trades_attack,
        beta=opt.non_negative(defense, "beta", values["beta"]),
        gamma=opt.fraction(defense, "gamma", values["gamma"]),
    )


@register_defense("lad", summary="LAD (eq. 5): η·∂L/∂x_n added at every hidden state; any base")
def lad(
    *,
    base: str = "natural",
    eta: float | None = None,
    eps: float | None = None,
    step_size: float | None = None,
    steps: int | None = None,
    random_start: bool | None = None,
    attack_mode: str | None = None,
    beta: float | None = None,
    gamma: float | None = None,
    data: str | None = None,
) -> LayerwiseAdversarialDefense:
    """LAD on ``base`` ∈ {natural, pgd_at, trades} (appendix B.2).

    Defaults (B.1): η the paper's for the data — 1000 on CIFAR-100, else 50
    (CIFAR-10; batch-mean loss, batch 128) — ``data`` is the trainer's context, not an
    option; attack ε 8/255, step 2/255, 10 steps, random start (PGD),
    eval mode; TRADES β = 1/λ = 6 and γ = 1/2. An option the base does not
    use (e.g. ``eps`` with base natural) is refused.
    """
    given = {
        "eps": eps,
        "step_size": step_size,
        "steps": steps,
        "random_start": random_start,
        "attack_mode": attack_mode,
        "beta": beta,
        "gamma": gamma,
    }
    return _build("lie_trotter", "lad", base, paper_eta(eta, data), given)


@register_defense("lad_sm", summary="LAD-SM (eq. 8): Strang–Marchuk layer-wise perturbation")
def lad_sm(
    *,
    base: str = "natural",
    eta: float | None = None,
    eps: float | None = None,
    step_size: float | None = None,
    steps: int | None = None,
    random_start: bool | None = None,
    attack_mode: str | None = None,
    beta: float | None = None,
    gamma: float | None = None,
    data: str | None = None,
) -> LayerwiseAdversarialDefense:
    """LAD-SM on ``base`` ∈ {natural, pgd_at, trades}; options and defaults as :func:`lad`.

    The offsets and the rule at stage transitions: :func:`lad_sm_offsets`.
    """
    given = {
        "eps": eps,
        "step_size": step_size,
        "steps": steps,
        "random_start": random_start,
        "attack_mode": attack_mode,
        "beta": beta,
        "gamma": gamma,
    }
    return _build("strang_marchuk", "lad_sm", base, paper_eta(eta, data), given)
