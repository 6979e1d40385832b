"""What every attack shares: input checks, the model wrapper that counts calls, modes and seeds.

An attack is called as ``x_adv = attack(model, x, y)`` on any classifier
``nn.Module`` taking images in [0, 1]; ``attack.run(model, x, y)`` returns an
:class:`AttackResult` with per-point success, model-call counts and, on
request, the loss trace. Subclasses implement one method, ``_attack``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..errors import InputError, RobustodeError
from .threat import ThreatModel

ModelMode = Literal["eval", "train", "keep"]


class AttackError(RobustodeError, RuntimeError):
    """The model misbehaved during an attack (e.g. returned non-finite logits)."""


class AttackInputError(InputError):
    """Images, labels or options an attack cannot take."""


@dataclass
class AttackResult:
    """What an attack found on a batch.

    ``success[i]``: the model misclassifies ``x_adv[i]`` (checked on the
    returned point, outside the attack's budget) or misclassified the clean
    image. ``queries[i]``: model calls the attack itself made on point i.
    ``loss_trace``: (iterations, N) loss per iterate, NaN where a point was no
    longer attacked (only with ``trace=True``). ``final_correct[i]``: the one
    verdict pass on ``x_adv[i]`` alone classified it correctly — what an
    ensemble reads, so that on a randomised model a point is judged as
    AutoAttack judges it (its own clean pass, then one pass per attack on the
    returned point); on a deterministic model it adds nothing to ``success``.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    clean_correct: torch.Tensor
    queries: torch.Tensor
    loss_trace: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    first_adversarial: torch.Tensor | None = None
    final_correct: torch.Tensor | None = None

    @property
    def robust(self) -> torch.Tensor:
        """Per point: still classified correctly on ``x_adv``."""
        return ~self.success

    @property
    def robust_accuracy(self) -> float:
        return self.robust.float().mean().item() if self.robust.numel() else float("nan")

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct.float().mean().item() if self.clean_correct.numel() else math.nan


def checked_logits(model: nn.Module, x: torch.Tensor, when: str) -> torch.Tensor:
    """``model(x)``, refused with an :class:`AttackError` unless it is (batch, classes) and
    finite: NaN logits make argmax, and so every verdict, arbitrary (NaN wins argmax)."""
    logits = model(x)
    if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise AttackError(
            f"the model returned logits of shape {tuple(logits.shape)} for {x.shape[0]} "
            "images; attacks need (batch, classes)"
        )
    if not torch.isfinite(logits).all():
        raise AttackError(
            f"the model returned non-finite logits {when}; "
            "a robustness number computed from them would be meaningless"
        )
    return logits


class Oracle:
    """The model as an attack sees it: counts calls per point and refuses non-finite logits."""

    def __init__(self, model: nn.Module, n: int, device: torch.device) -> None:
        self.model = model
        self.queries = torch.zeros(n, dtype=torch.long, device=device)

    def __call__(self, x: torch.Tensor, index: torch.Tensor, copies: int = 1) -> torch.Tensor:
        """Logits of ``x``, whose rows are ``copies`` consecutive rows per point of ``index``.

        ``copies`` > 1 serves query-based attacks that probe each point many times in one pass.
        """
        logits = checked_logits(self.model, x, "during the attack")
        self.queries.index_add_(0, index, torch.full_like(index, copies))
        return logits


def model_rng_seed(seed: int) -> int:
    """The seed of the global RNG during an attack with ``seed``: derived from it, not equal to
    it, so the model's random draws are not the attack generator's own stream again."""
    return (int(seed) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % (2**63)


@contextmanager
def seeded_model_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run with the global torch RNG (CPU, and ``device`` if it is a GPU) seeded from ``seed``,
    and give the caller's RNG state back afterwards.

    Attacks draw their own random numbers from their generator; a randomised
    model (noise layers, random resizing, ``NoisyEnsemble(seed=None)``, dropout
    in train mode) draws from the global RNG. Seeding it per run makes the
    attack on such a model reproducible (AutoAttack seeds the global RNG with
    its seed in every attack for the same reason), and restoring it leaves the
    caller's random stream as it was.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        value = model_rng_seed(seed)
        torch.default_generator.manual_seed(value)
        if devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(value)
        yield


@contextmanager
def model_mode(model: nn.Module, mode: ModelMode) -> Iterator[None]:
    """Run in eval or train mode and restore every submodule's own flag afterwards."""
    if mode == "keep":
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    model.train(mode == "train")
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class BestIterate:
    """Per point, the best iterate seen so far: an adversarial one first, then the highest loss.

    Returning this instead of the last iterate is what makes an attack return
    an adversarial point it passed through (the first peer defect of docs/references.md).
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x.clone()
        self.adv = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.loss = torch.full((x.shape[0],), -math.inf, device=x.device)

    def update(
        self, index: torch.Tensor, x_k: torch.Tensor, adv: torch.Tensor, loss: torch.Tensor
    ) -> None:
        prev_adv, prev_loss = self.adv[index], self.loss[index]
        better = (adv & ~prev_adv) | ((adv == prev_adv) & (loss.to(prev_loss) > prev_loss))
        chosen = index[better]
        self.x[chosen] = x_k[better].detach()
        self.adv[chosen] = adv[better]
        self.loss[chosen] = loss.to(prev_loss)[better]


def require_counts(**values: object) -> None:
    """Each value must be an integer ≥ 1 (steps, restarts, queries, …)."""
    for label, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AttackInputError(f"{label} must be an integer ≥ 1, got {value!r}")


def require_positive(**values: object) -> None:
    """Each value must be a finite number > 0 (step sizes, learning rates, …)."""
    for label, value in values.items():
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not (ok and math.isfinite(value) and value > 0):  # type: ignore[arg-type]
            raise AttackInputError(f"{label} must be a finite number > 0, got {value!r}")


def check_inputs(
    x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, model: nn.Module | None = None
) -> None:
    """One clear error for images or labels an attack cannot take (and, for a registry model,
    images it cannot take: its ``model_config`` says how many channels)."""
    if isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
        raise AttackInputError(
            "images must be a floating-point tensor in [0, 1], got torch.uint8 (0..255): "
            "convert with robustode.data.float_images(x) (the same as x.float() / 255)"
        )
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
        raise AttackInputError(
            f"images must be a floating-point tensor in [0, 1], got "
            f"{getattr(x, 'dtype', type(x).__name__)}"
        )
    if x.dim() < 2:
        raise AttackInputError(f"images must be batched (N, …), got shape {tuple(x.shape)}")
    if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32):
        raise AttackInputError(
            f"labels must be an integer tensor, got {getattr(y, 'dtype', type(y).__name__)}"
        )
    if y.shape != (x.shape[0],):
        raise AttackInputError(
            f"labels must have shape ({x.shape[0]},) for {x.shape[0]} images, got {tuple(y.shape)}"
        )
    if x.device != y.device:
        raise AttackInputError(f"images are on {x.device} but labels on {y.device}")
    if x.numel() and not torch.isfinite(x).all():
        raise AttackInputError("images contain NaN or infinity")
    if x.numel() and (x.min() < threat.lower or x.max() > threat.upper):
        raise AttackInputError(
            f"images must lie in [{threat.lower:g}, {threat.upper:g}] (got values in "
            f"[{x.min().item():.4g}, {x.max().item():.4g}]); pass raw pixels and put any "
            "normalisation inside the model"
        )
    config = getattr(model, "model_config", None)
    channels = config.get("in_channels") if isinstance(config, dict) else None
    # a wrong layout otherwise surfaces as a convolution's RuntimeError, or (a 3-D batch)
    # is taken by conv2d as one unbatched image
    if isinstance(channels, int) and (x.dim() != 4 or x.shape[1] != channels):
        raise AttackInputError(
            f"images must have shape (N, {channels}, H, W) for this {config.get('name')} "
            f"model, got {tuple(x.shape)}"
        )


class Attack:
    """Base of every attack: ``attack(model, x, y) → x_adv`` and ``attack.run(...) → AttackResult``.

    ``model_mode``: "eval" (default, the RobustBench protocol) or "train" is set
    for the attack and every submodule's own mode is restored afterwards;
    "keep" leaves the model as it is. ``seed`` seeds the attack's own
    generator (never the global RNG), so the same seed gives the same result.
    ``batch_size`` splits large inputs into chunks attacked one after another.
    """

    name: str = "attack"
    # fewer classes make the attack's loss meaningless (DLR needs 3, targeted DLR 4)
    min_classes: int = 2
    # whether _attack reports the iteration each point first turned adversarial at
    tracks_first_adversarial: bool = False

    def __init__(
        self,
        threat: ThreatModel,
        *,
        seed: int = 0,
        model_mode: ModelMode = "eval",
        batch_size: int | None = None,
    ) -> None:
        if model_mode not in ("eval", "train", "keep"):
            raise AttackInputError(f"model_mode must be eval, train or keep, got '{model_mode}'")
        if batch_size is not None and batch_size < 1:
            raise AttackInputError(f"batch_size must be ≥ 1, got {batch_size}")
        self.threat = threat
        self.seed = int(seed)
        self.model_mode = model_mode
        self.batch_size = batch_size

    # ------------------------------------------------------------ interface
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.run(model, x, y).x_adv

    def budget(self) -> int:
        """The most model calls the attack makes per point (outside the final success check)."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} ({self.threat.describe()})"

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, trace: bool = False
    ) -> AttackResult:
        check_inputs(x, y, self.threat, model)
        y = y.long()
        x = x.detach()
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        chunk = self.batch_size or max(x.shape[0], 1)
        parts: list[AttackResult] = []
        with model_mode(model, self.model_mode), seeded_model_rng(self.seed, x.device):
            for start in range(0, x.shape[0], chunk):
                xb, yb = x[start : start + chunk], y[start : start + chunk]
                parts.append(self._run_chunk(model, xb, yb, generator, trace))
        return concat_results(parts, x, y)

    def _run_chunk(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
        trace: bool,
    ) -> AttackResult:
        """Attack the clean-correct points of one chunk (AutoAttack/RobustBench protocol).

        A point misclassified on its clean image is not robust whatever the
        attack returns; it is neither attacked nor charged any model calls.
        """
        # the clean and the final verdicts are checked as the attack's own calls are: a NaN
        # there would silently count a point as misclassified, or as robust
        with torch.no_grad():
            logits = checked_logits(model, x, "on the clean images")
        if logits.shape[1] < self.min_classes:
            raise AttackInputError(
                f"{self.name} needs at least {self.min_classes} classes, the model has "
                f"{logits.shape[1]}"
            )
        clean = logits.argmax(1) == y
        todo = torch.nonzero(clean).squeeze(1)
        x_adv = x.clone()
        queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        loss_trace, extra, first = None, {}, None
        if not todo.numel() and self.tracks_first_adversarial:
            # nothing to attack (a model that gets every point wrong): each point is broken at
            # iteration 0, as misclassified points of an attacked chunk are, and its loss trace
            # has no iterate (_concat pads it with NaN), so callers need no special case
            first = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            if trace:
                loss_trace = torch.full((0, x.shape[0]), float("nan"), device=x.device)
        if todo.numel():
            oracle = Oracle(model, todo.numel(), x.device)
            found, sub_trace, extra = self._attack(oracle, x[todo], y[todo], generator, trace)
            # Re-project once more: float rounding must never leave the threat model.
            x_adv[todo] = self.threat.project(found.detach(), x[todo])
            queries[todo] = oracle.queries
            sub_first = extra.pop("first_adversarial", None)
            if sub_first is not None:
                first = torch.where(clean, -1, 0).to(device=x.device, dtype=torch.long)
                first[todo] = sub_first
            if sub_trace is not None:
                loss_trace = torch.full(
                    (sub_trace.shape[0], x.shape[0]), float("nan"), device=x.device
                )
                loss_trace[:, todo] = sub_trace.float()
        with torch.no_grad():
            pred = checked_logits(model, x_adv, "on the adversarial images").argmax(1)
        return AttackResult(
            x_adv, (pred != y) | ~clean, clean, queries, loss_trace, extra, first, pred == y
        )

    # ------------------------------------------------------------- subclass
    def _attack(
        self,
        oracle: Oracle,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
        trace: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        """Attack clean-correct points; return (x_adv, loss trace or None, extras)."""
        raise NotImplementedError


def concat_results(parts: list[AttackResult], x: torch.Tensor, y: torch.Tensor) -> AttackResult:
    """The results of consecutive chunks of ``x`` as one (loss traces padded with NaN)."""
    if not parts:
        empty = torch.zeros(0, dtype=torch.bool, device=x.device)
        return AttackResult(x.clone(), empty, empty, torch.zeros(0, dtype=torch.long))
    if len(parts) == 1:
        return parts[0]
    traces = [p.loss_trace for p in parts]
    trace = None
    if all(t is not None for t in traces):
        length = max(t.shape[0] for t in traces)  # type: ignore[union-attr]
        padded = []
        for t in traces:
            pad = torch.full((length - t.shape[0], t.shape[1]), float("nan"), device=t.device)  # type: ignore[union-attr]
            padded.append(torch.cat([t, pad]))  # type: ignore[list-item]
        trace = torch.cat(padded, dim=1)
    firsts = [p.first_adversarial for p in parts]
    first = torch.cat(firsts) if all(f is not None for f in firsts) else None  # type: ignore[arg-type]
    finals = [p.final_correct for p in parts]
    final = torch.cat(finals) if all(f is not None for f in finals) else None  # type: ignore[arg-type]
    return AttackResult(
        torch.cat([p.x_adv for p in parts]),
        torch.cat([p.success for p in parts]),
        torch.cat([p.clean_correct for p in parts]),
        torch.cat([p.queries for p in parts]),
        trace,
        parts[0].extra,
        first,
        final,
    )
