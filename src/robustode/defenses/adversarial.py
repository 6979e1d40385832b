"""Adversarial training: PGD-AT (Madry et al. 2018) and TRADES (Zhang et al. 2019).

Both attack with the attack package's one gradient loop
(:class:`~robustode.attacks.GradientAttack`), in the form training needs: no
early stop, the **last** iterate (as Madry's and TRADES' code return), and no
success check after the loop (:meth:`TrainingAttack.perturb`).

Randomness: a training attack must not restart from the same random point on
every batch, which an attack with a fixed ``seed`` would do. Each call of
:meth:`TrainingAttack.perturb` instead seeds a fresh generator (on the batch's
device) with one draw from the **global CPU torch RNG** (:func:`batch_generator`).
The trainer's per-epoch reseeding of the global RNG therefore fixes every
random start, on any device, and a resumed run sees the same starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.base import ModelMode, Oracle, check_inputs, model_mode
from ..attacks.gradient import GradientAttack
from . import options as opt
from .base import Stats, correct, register_defense, to_stats

# A seed range every torch.Generator accepts.
_SEED_RANGE = 2**62


def batch_generator(device: torch.device | str) -> torch.Generator:
    """A generator for one batch's attack randomness, seeded by one draw from the global CPU RNG."""
    seed = int(torch.randint(0, _SEED_RANGE, (), dtype=torch.int64).item())
    return torch.Generator(device=device).manual_seed(seed)


class TrainingAttack(GradientAttack):
    """L∞ PGD as adversarial training runs it: all points, all steps, the last iterate.

    Budget per batch: ``steps`` forward+backward passes plus one forward of the
    last iterate (the shared loop evaluates every iterate it returns).
    """

    name = "pgd-training"

    def __init__(
        self,
        eps: float,
        *,
        steps: int,
        step_size: float,
        random_start: bool = True,
        model_mode: ModelMode = "eval",
    ) -> None:
        super().__init__(
            "linf",
            eps,
            steps=steps,
            step_size=step_size,
            random_start=random_start,
            early_stop=False,
            select="last",
            model_mode=model_mode,
        )

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The adversarial batch (detached, inside the ε-ball and the box).

        Runs in ``model_mode`` and restores every submodule's own train/eval
        flag afterwards; draws its random start from :func:`batch_generator`.
        """
        check_inputs(x, y, self.threat, model)
        x, y = x.detach(), y.long()
        generator = batch_generator(x.device)
        with model_mode(model, self.model_mode), self.prepared(model, x):
            oracle = Oracle(model, x.shape[0], x.device)
            x_adv, _, _ = self._attack(oracle, x, y, generator, False)
        return self.threat.project(x_adv.detach(), x)

    @contextmanager
    def prepared(self, model: nn.Module, x: torch.Tensor) -> Iterator[None]:
        """Hook: state the loss needs for this batch (set up in the attack's mode); none here."""
        yield


class TradesAttack(TrainingAttack):
    """TRADES' inner maximisation: sign ascent on Σ KL(f(x) ‖ f(x')) from x' = x + 0.001·N(0, 1).

    As the official code: the start is not projected (the first step's
    projection is), the clean distribution f(x) is computed in the attack's
    mode and held fixed (the official loop recomputes the same eval-mode value
    at every step).
    """

    name = "trades-attack"

    def __init__(
        self, eps: float, *, steps: int, step_size: float, model_mode: ModelMode = "eval"
    ) -> None:
        super().__init__(
            eps, steps=steps, step_size=step_size, random_start=True, model_mode=model_mode
        )
        self.loss_name = "kl"
        self._target: torch.Tensor | None = None

    def describe(self) -> str:
        return (
            f"{self.name}: {self.threat.describe()}, {self.steps} steps of {self.step_size:.4g}, "
            "KL loss, start x + 0.001·N(0, 1)"
        )

    def init_delta(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return 0.001 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._target is None or self._target.shape != logits.shape:
            raise RuntimeError("TradesAttack.loss runs only inside TradesAttack.perturb")
        return kl_per_sample(logits, self._target)

    @contextmanager
    def prepared(self, model: nn.Module, x: torch.Tensor) -> Iterator[None]:
        """Hold the clean distribution f(x) for :meth:`loss` while the loop runs."""
        with torch.no_grad():
            self._target = F.softmax(model(x), dim=1)
        try:
            yield
        finally:
            self._target = None


def kl_per_sample(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ softmax(logits)) per sample, p = ``target_probs`` (TRADES' KLDivLoss, unreduced)."""
    return F.kl_div(F.log_softmax(logits, dim=1), target_probs, reduction="none").sum(1)


def trades_kl(logits_natural: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """TRADES' robust term: Σ_i KL(f(x_i) ‖ f(x'_i)) / B, gradients through both arguments."""
    kl_sum = F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.softmax(logits_natural, dim=1), reduction="sum"
    )
    return kl_sum / logits_natural.shape[0]


def eval_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct clean predictions in eval mode without gradients (no BN statistics touched)."""
    with model_mode(model, "eval"), torch.no_grad():
        return correct(model(x), y)


class PGDTraining:
    """Madry et al. (2018): minimise the mean CE on the last iterate of an L∞ PGD attack.

    ``train_correct`` (clean predictions) costs one extra forward, made in
    eval mode without gradients so that batch-norm running statistics see
    only the adversarial batch, the batch the loss is computed on.
    """

    name = "pgd_at"

    def __init__(self, attack: TrainingAttack) -> None:
        self.attack = attack

    def adversarial_examples(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """The batch this defense trains on (draws from the global RNG, as a call does)."""
        return self.attack.perturb(model, x, y)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, Stats]:
        x_adv = self.adversarial_examples(model, x, y)
        logits_adv = model(x_adv)
        loss = F.cross_entropy(logits_adv, y)
        return loss, to_stats(
            {
                "loss": loss,
                "train_correct": eval_correct(model, x, y),
                "adv_correct": correct(logits_adv, y),
            }
        )

    def __repr__(self) -> str:
        return f"PGDTraining({self.attack.describe()}, attack in {self.attack.model_mode} mode)"


class TRADES:
    """TRADES (Zhang et al. 2019, official code): CE(f(x), y) + β·Σ_i KL(f(x_i) ‖ f(x'_i)) / B.

    x' comes from :class:`TradesAttack` (eval mode by default); the loss is
    computed in the mode the caller's model is in (train mode in the trainer).
    One clean forward serves both the CE and the KL target (the official code
    makes two identical ones; only batch-norm running statistics differ).
    """

    name = "trades"

    def __init__(self, attack: TradesAttack, beta: float) -> None:
        self.attack = attack
        self.beta = beta

    def adversarial_examples(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """The batch x' this defense trains on (draws from the global RNG, as a call does)."""
        return self.attack.perturb(model, x, y)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, Stats]:
        x_adv = self.adversarial_examples(model, x, y)
        logits_nat = model(x)
        logits_adv = model(x_adv)
        ce = F.cross_entropy(logits_nat, y)
        kl = trades_kl(logits_nat, logits_adv)
        loss = ce + self.beta * kl
        return loss, to_stats(
            {
                "loss": loss,
                "train_correct": correct(logits_nat, y),
                "adv_correct": correct(logits_adv, y),
                "ce": ce,
                "kl": kl,
            }
        )

    def __repr__(self) -> str:
        return f"TRADES(β={self.beta:g}, {self.attack.describe()})"


def _make_attack(
    cls: type[TrainingAttack],
    defense: str,
    eps: Any,
    step_size: Any,
    steps: Any,
    attack_mode: Any,
    **extra: Any,
) -> TrainingAttack:
    """``cls`` with checked options (each bad value is one DefenseConfigError)."""
    return cls(
        opt.radius(defense, "eps", eps),
        steps=opt.positive_int(defense, "steps", steps),
        step_size=opt.positive(defense, "step_size", step_size),
        model_mode=opt.choice(defense, "attack_mode", attack_mode, ("eval", "train")),  # type: ignore[arg-type]
        **extra,
    )


def make_pgd_attack(
    defense: str, eps: Any, step_size: Any, steps: Any, random_start: Any, attack_mode: Any
) -> TrainingAttack:
    """A checked :class:`TrainingAttack`."""
    start = opt.flag(defense, "random_start", random_start)
    return _make_attack(
        TrainingAttack, defense, eps, step_size, steps, attack_mode, random_start=start
    )


def make_trades_attack(
    defense: str, eps: Any, step_size: Any, steps: Any, attack_mode: Any
) -> TradesAttack:
    """A checked :class:`TradesAttack`."""
    return _make_attack(TradesAttack, defense, eps, step_size, steps, attack_mode)  # type: ignore[return-value]


@register_defense("pgd_at", summary="Madry et al. PGD-AT: CE on the last L∞ PGD iterate")
def pgd_at(
    *,
    eps: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 10,
    random_start: bool = True,
    attack_mode: str = "eval",
) -> PGDTraining:
    """PGD-AT with Madry's CIFAR-10 setting (ε 8/255, α 2/255, 10 steps, uniform random start).

    ``attack_mode``: the mode the attack runs the model in ("eval", as TRADES'
    code and the MadryLab robustness library; "train" as some re-implementations).
    """
    return PGDTraining(make_pgd_attack("pgd_at", eps, step_size, steps, random_start, attack_mode))


@register_defense("trades", summary="TRADES: CE(f(x)) + β·KL(f(x) ‖ f(x')), official semantics")
def trades(
    *,
    beta: float = 6.0,
    eps: float = 0.031,
    step_size: float = 0.007,
    steps: int = 10,
    attack_mode: str = "eval",
) -> TRADES:
    """TRADES with the official CIFAR-10 setting (ε 0.031, step 0.007, 10 steps, β 6 = 1/λ).

    SONet's baselines use β ∈ {1, 6}; LAD's use β = 6 with ε 8/255, step 2/255.
    """
    attack = make_trades_attack("trades", eps, step_size, steps, attack_mode)
    return TRADES(attack, opt.non_negative("trades", "beta", beta))
