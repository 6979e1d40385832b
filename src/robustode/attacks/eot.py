"""Randomised models: Expectation over Transformation and AutoAttack's randomness check.

A model whose outputs change from one forward pass to the next (input noise,
random resizing, LAD's noise baseline through ``NoisyEnsemble``) makes the
gradient of a single pass a noisy estimate. EOT (Athalye, Engstrom, Ilyas &
Kwok, ICML 2018, §4) attacks the expected loss instead: the input gradient
is averaged over ``eot_iter`` stochastic passes. Every gradient attack takes
``eot_iter`` (:class:`~robustode.attacks.GradientAttack`, APGD, FAB);
``EOT(attack, iterations=k)`` returns the attack with k passes per gradient.

Seeds: the attack's own random numbers come from its generator; the model's
come from the global torch RNG, which every attack run seeds from its seed
and restores afterwards (:func:`~robustode.attacks.base.seeded_model_rng`),
so a run on a randomised model is reproducible and leaves the caller's RNG
alone.

Verdict (AutoAttack's rand version): a point is robust if one stochastic
pass classifies its clean image correctly and, for each attack, one pass on
the image that attack returns does too. Inside an attack an iterate counts
as adversarial when the last of its ``eot_iter`` passes misclassifies it,
as in AutoAttack's APGD; with EOT the attack does not stop at that point
(one lucky pass is no lasting success) but keeps raising the loss and
returns its highest-loss adversarial iterate for the verdict pass.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .base import (
    Attack,
    AttackInputError,
    AttackResult,
    Oracle,
    checked_logits,
    model_mode,
    seeded_model_rng,
)

# AutoAttack's check_randomized: 5 passes, L2-normalised logits may differ by at most 1e-4
RANDOM_CHECK_PASSES = 5
RANDOM_CHECK_TOLERANCE = 1e-4
RANDOM_CHECK_IMAGES = 250  # AutoAttack checks its first batch (bs = 250)


def require_eot(eot_iter: object) -> None:
    if isinstance(eot_iter, bool) or not isinstance(eot_iter, int) or eot_iter < 1:
        raise AttackInputError(f"eot_iter must be an integer ≥ 1, got {eot_iter!r}")


def eot_loss_and_grad(
    oracle: Oracle,
    x: torch.Tensor,
    index: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    eot_iter: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, per-sample loss, input gradient of the summed loss), all detached.

    The gradient is the mean over ``eot_iter`` forward passes; the logits and
    loss are the last pass's (AutoAttack's APGD). Each pass is one model call.
    """
    grad = torch.zeros_like(x)
    for _ in range(eot_iter):
        x_k = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = oracle(x_k, index)
            loss = loss_fn(logits)
            (g,) = torch.autograd.grad(loss.sum(), x_k)
        grad += g
    if eot_iter > 1:
        grad /= eot_iter
    return logits.detach(), loss.detach(), grad.detach()


@dataclass(frozen=True)
class RandomnessCheck:
    """AutoAttack's check for a randomised model on the first images of a batch."""

    random: bool
    max_difference: float  # largest ‖z/‖z‖ − z'/‖z'‖‖₂ between two passes
    correct: tuple[int, ...] | None  # correctly classified images per pass (with labels)
    passes: int
    images: int

    def describe(self) -> str:
        verdict = "randomised" if self.random else "deterministic"
        counts = f", correct per pass {list(self.correct)}" if self.correct is not None else ""
        return (
            f"{verdict}: {self.passes} passes on {self.images} images, largest difference of "
            f"the L2-normalised logits {self.max_difference:.3g} (threshold "
            f"{RANDOM_CHECK_TOLERANCE:g}){counts}"
        )


def check_randomness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    passes: int = RANDOM_CHECK_PASSES,
    tolerance: float = RANDOM_CHECK_TOLERANCE,
    images: int = RANDOM_CHECK_IMAGES,
    seed: int = 0,
    mode: str = "eval",
) -> RandomnessCheck:
    """AutoAttack's ``check_randomized``: run the first ``images`` of ``x`` ``passes`` times; the
    model is randomised if the count of correct predictions changes (when labels are given) or
    two passes' L2-normalised logits differ by more than ``tolerance`` anywhere.

    Runs in the seeded context (the caller's RNG is left alone) and in ``mode``.
    """
    x = x[:images].detach()
    y = None if y is None else y[:images]
    outputs, correct = [], []
    with model_mode(model, mode), seeded_model_rng(seed, x.device), torch.no_grad():  # type: ignore[arg-type]
        for _ in range(passes):
            logits = checked_logits(model, x, "in the randomness check").float()
            outputs.append(logits / (logits.norm(dim=1, keepdim=True) + 1e-10))
            if y is not None:
                correct.append(int((logits.argmax(1) == y).sum()))
    difference = 0.0
    for a in range(passes):
        for b in range(a + 1, passes):
            difference = max(difference, (outputs[a] - outputs[b]).norm(dim=1).max().item())
    random = difference > tolerance or len(set(correct)) > 1
    return RandomnessCheck(
        random, difference, tuple(correct) if y is not None else None, passes, int(x.shape[0])
    )


class EOT(Attack):
    """``attack`` with every input gradient averaged over ``iterations`` stochastic passes.

    ``EOT(APGDCE(eps=8/255), iterations=20)`` is AutoAttack's rand-version
    APGD-CE. Works on any attack with an ``eot_iter`` option (the gradient
    attacks); the gradient-free ones (Square, SPSA) and CW-L∞ are refused.
    The attack no longer stops at a point's first adversarial iterate (see the
    module docstring). Budget: the inner attack's, which counts every pass.
    """

    def __init__(self, attack: Attack, iterations: int = 20) -> None:
        if not isinstance(attack, Attack) or not hasattr(attack, "eot_iter"):
            raise AttackInputError(
                f"EOT needs a gradient attack with an eot_iter option (PGD, FGSM, APGD, FAB, …), "
                f"got {getattr(attack, 'name', type(attack).__name__)}"
            )
        require_eot(iterations)
        super().__init__(
            attack.threat,
            seed=attack.seed,
            model_mode=attack.model_mode,
            batch_size=attack.batch_size,
        )
        inner = copy.copy(attack)
        inner.eot_iter = iterations  # type: ignore[attr-defined]
        if hasattr(inner, "early_stop"):
            inner.early_stop = False  # type: ignore[attr-defined]
        self.attack = inner
        self.iterations = iterations
        self.name = f"{attack.name}+eot{iterations}"
        self.min_classes = attack.min_classes

    def budget(self) -> int:
        return self.attack.budget()

    def describe(self) -> str:
        return self.attack.describe()

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, trace: bool = False
    ) -> AttackResult:
        return self.attack.run(model, x, y, trace=trace)

    def _attack(self, oracle, x, y, generator, trace) -> Any:  # pragma: no cover - run() delegates
        raise NotImplementedError
