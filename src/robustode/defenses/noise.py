"""Gaussian noise at every perturbation point: training (:class:`NoiseInjection`) and inference
(:class:`NoisyEnsemble`).

Two scales, both in the literature:

- **absolute** (LAD §4.4, its noise baseline): h + σ·N(0, 1) with σ² = 0.01,
  i.e. ``std=0.1``;
- **relative** (EnResNet, Wang et al. 2019, its code): h + c·std(h)·N(0, 1),
  c = 0.1 (``relative=True, std=0.1``), std(h) over the whole tensor (the
  batch included) and not detached, as that code does.

Noise acts at every point the model exposes (the stem's output included,
EnResNet's code adds it after residual blocks only). During training the
whole defense runs under the noise (its attack too), as in a model whose
layers are noisy. Training noise comes from the global torch RNG of the
activation's device, so the same global seed gives the same loss on CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..nn.perturbation import perturbed
from . import options as opt
from .base import (
    Defense,
    DefenseConfigError,
    Stats,
    create_defense,
    list_defenses,
    register_defense,
)


class PointNoise:
    """A perturbation function ``fn(name, h)`` adding Gaussian noise (absolute or relative)."""

    def __init__(
        self, std: float, *, relative: bool = False, generator: torch.Generator | None = None
    ) -> None:
        self.std = std
        self.relative = relative
        self.generator = generator

    def __call__(self, name: str, h: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(h.shape, generator=self.generator, device=h.device, dtype=h.dtype)
        scale = self.std * h.std() if self.relative else self.std
        return h + scale * noise

    def __repr__(self) -> str:
        kind = "·std(h)" if self.relative else ""
        return f"PointNoise({self.std:g}{kind}·N(0, 1))"


class NoiseInjection:
    """Run an inner defense with Gaussian noise at every perturbation point (LAD §4.4, EnResNet).

    LAD and LAD-SM inside it apply the noise first and their offsets after.
    """

    name = "noise"

    def __init__(self, inner: Defense, std: float, *, relative: bool = False) -> None:
        self.inner = inner
        self.noise = PointNoise(std, relative=relative)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, Stats]:
        opt.require_points(self.name, model)
        with perturbed(model, self.noise):
            return self.inner(model, x, y)

    def __repr__(self) -> str:
        return f"NoiseInjection({self.noise!r}, {self.inner!r})"


class NoisyEnsemble(nn.Module):
    """Logits averaged over ``k`` noisy forward passes of ``model`` (LAD §4.4: k = 100).

    An ordinary classifier module — any attack can take it. It leaves the
    model's train/eval mode alone. Noise: with ``seed=None`` from the global
    torch RNG; with an integer seed from the ensemble's own generator (one per
    device, created at first use and continued across calls), so repeated
    calls see fresh noise that is still the same from run to run.
    """

    def __init__(
        self,
        model: nn.Module,
        k: int = 100,
        *,
        std: float = 0.1,
        relative: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.k = opt.positive_int("NoisyEnsemble", "k", k)
        self.std = opt.non_negative("NoisyEnsemble", "std", std)
        self.relative = opt.flag("NoisyEnsemble", "relative", relative)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise DefenseConfigError(
                f"NoisyEnsemble: seed must be an integer or None, got {seed!r}"
            )
        opt.require_points("NoisyEnsemble", model)
        self.model = model
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = PointNoise(self.std, relative=self.relative, generator=self._generator(x.device))
        total: torch.Tensor | None = None
        with perturbed(self.model, noise):
            for _ in range(self.k):
                logits = self.model(x)
                total = logits if total is None else total + logits
        assert total is not None
        return total / self.k

    def extra_repr(self) -> str:
        scale = f"{self.std:g}·std(h)" if self.relative else f"{self.std:g}"
        return f"k={self.k}, noise {scale}·N(0, 1), seed={self.seed}"


@register_defense("noise", summary="Gaussian noise at every hidden state around a base defense")
def noise(
    *,
    std: float = 0.1,
    relative: bool = False,
    base: str = "natural",
    base_options: dict[str, Any] | None = None,
    data: str | None = None,
) -> NoiseInjection:
    """Noise injection around ``base`` (any other defense, built with ``base_options``; the
    trainer's context ``data`` is passed on to it).

    ``std=0.1, relative=False``: LAD's N(0, 0.01); ``relative=True``:
    EnResNet's 0.1·std(h). "PGD + LAD + noise" is
    ``noise(base="lad", base_options={"base": "pgd_at"})``.
    """
    std = opt.non_negative("noise", "std", std)
    relative = opt.flag("noise", "relative", relative)
    choices = [name for name in list_defenses() if name != "noise"]
    base = opt.choice("noise", "base", base, choices)
    if base_options is not None and not isinstance(base_options, dict):
        raise DefenseConfigError(
            f"noise: base_options must be a mapping of option names, got {base_options!r}"
        )
    inner = create_defense(base, context={"data": data}, **(base_options or {}))
    return NoiseInjection(inner, std, relative=relative)
