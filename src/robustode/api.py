"""One call for the everyday questions: load a model, evaluate it, audit it.

``evaluate_model`` is to robustode what AutoAttack's ``run_standard_evaluation``
is to AutoAttack: any ``nn.Module`` taking images in [0, 1] and returning
logits, the first n test images, one threat model, one call. It runs exactly
what ``robustode evaluate`` runs (:func:`~robustode.evaluate.runner.run_evaluation`,
the same attack seeds per batch), so the numbers are the command line's.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InputError

VERSIONS = ("standard", "plus", "rand")
THREATS = ("linf", "l2", "l1")


@dataclass
class ModelEvaluation:
    """What :func:`evaluate_model` found on the n points.

    ``robust[i]``: point i was classified correctly and no attack broke it (the worst case
    over ``attacks``); ``x_adv``: per point the image of the first attack that broke it, else
    the clean image (with ``return_adversarials``).
    """

    clean_accuracy: float
    robust_accuracy: float
    robust: torch.Tensor
    clean_correct: torch.Tensor
    per_attack: dict[str, float]
    robust_by_attack: dict[str, torch.Tensor]
    attacks: list[str]
    report: dict[str, Any]
    out_dir: Path | None
    x_adv: torch.Tensor | None = None

    def __str__(self) -> str:
        n = int(self.robust.numel())
        rows = ", ".join(f"{k} {100 * v:.2f} %" for k, v in self.per_attack.items())
        return (
            f"clean {100 * self.clean_accuracy:.2f} %, robust {100 * self.robust_accuracy:.2f} % "
            f"({int(self.robust.sum())} of {n} points; {rows})"
        )


def _default_attacks(threat: str, eps: float, version: str) -> list[str]:
    if threat not in THREATS:
        raise InputError(f"threat must be one of {', '.join(THREATS)}, got {threat!r}")
    if version not in VERSIONS:
        raise InputError(f"version must be one of {', '.join(VERSIONS)}, got {version!r}")
    return [f"autoattack:version={version},norm={threat},eps={float(eps)!r}"]


def evaluate_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    threat: str = "linf",
    eps: float = 8 / 255,
    version: str = "standard",
    attacks: list[str] | None = None,
    batch_size: int = 100,
    seed: int = 0,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    return_adversarials: bool = False,
    progress: bool | None = False,
) -> ModelEvaluation:
    """Robust accuracy of ``model`` on ``x`` (float images in [0, 1]) with labels ``y``.

    By default AutoAttack's ``version`` (standard, plus or rand) in the ``threat`` model
    (linf, l2 or l1) at radius ``eps``; ``attacks`` names attack specs instead (as
    ``robustode evaluate --attacks``: e.g. ``["pgd20-linf", "apgd-t:eps=8/255"]``), all of
    one threat model, and the worst case is taken over them. ``out_dir``: where the report,
    batch files (and adversarials) go, continuing an interrupted run as the command line
    does; None keeps nothing on disk. No curves are run. ``progress``: False (the default)
    prints nothing, None one line per attack on stderr, True a progress bar.
    """
    from .evaluate.runner import run_evaluation
    from .evaluate.suites import resolve_attacks

    if attacks is None:
        specs = resolve_attacks(None, _default_attacks(threat, eps, version), model)
    else:
        specs = resolve_attacks(None, attacks, model)
    threats = {spec.create(seed=seed).threat.describe() for spec in specs}
    if len(threats) > 1:
        raise InputError(
            "evaluate_model takes the worst case over its attacks, so they must share one "
            f"threat model; got {', '.join(sorted(threats))}"
        )
    with tempfile.TemporaryDirectory(prefix="robustode-eval-") as scratch:
        folder = Path(out_dir) if out_dir is not None else Path(scratch)
        result = run_evaluation(
            model,
            x,
            y,
            specs,
            folder,
            batch_size=batch_size,
            seed=seed,
            overwrite=overwrite,
            progress=bool(progress),
            stream=io.StringIO() if progress is False else None,
            curve_steps=0,
            eps_grid=(),
            plots=out_dir is not None,
            save_adversarials=return_adversarials,
        )
    ids = [spec.id for spec in specs]
    clean = result.points[ids[0]].clean_correct.bool().cpu()
    by_attack = {i: clean & result.points[i].robust.bool().cpu() for i in ids}
    robust = clean.clone()
    for i in ids:
        robust &= by_attack[i]
    n = max(int(robust.numel()), 1)
    x_adv = result.worst_case_adversarials(x, ids) if return_adversarials else None
    return ModelEvaluation(
        clean_accuracy=int(clean.sum()) / n,
        robust_accuracy=int(robust.sum()) / n,
        robust=robust,
        clean_correct=clean,
        per_attack={i: int(r.sum()) / n for i, r in by_attack.items()},
        robust_by_attack=by_attack,
        attacks=ids,
        report=result.report,
        out_dir=None if out_dir is None else Path(out_dir),
        x_adv=x_adv,
    )


def load_model(
    path: str | Path | None = None,
    *,
    model: str | None = None,
    model_args: dict[str, Any] | None = None,
    weights: str | Path | None = None,
    checkpoint: str | int = "latest",
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A model in eval mode: robustode's own (``path``: a run folder, a checkpoint ``.json``
    or a weights ``.safetensors``) or yours (``model="pkg.module:factory"`` or
    ``"file.py:factory"`` called with ``model_args``, then ``weights`` — safetensors or a
    PyTorch state dict read with ``weights_only`` — loaded strictly). The same rules as the
    command line's ``--model``/``--weights`` (docs/byom.md)."""
    from .evaluate.target import load_target

    return load_target(
        path,
        model=model,
        model_args=model_args,
        weights=weights,
        checkpoint=checkpoint,
        device=device,
    ).model


__all__ = ["ModelEvaluation", "evaluate_model", "load_model"]
