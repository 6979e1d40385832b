"""Solver substitution: deployed outputs, substitute gradients, never weaker than plain PGD."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustode.attacks import (
    PGD,
    AttackInputError,
    SolverSubstitute,
    SolverSubstitution,
    create_attack,
    substitute_solver,
)
from robustode.attacks.adaptive import ode_blocks
from robustode.data import load_dataset
from robustode.models import create_model
from robustode.ode import SolverConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _digits(n: int = 96):
    data = load_dataset("digits", split="test").subset(n)
    return data.float_images(), data.labels


def _trained_soblock(method: str, **options) -> torch.nn.Module:
    """A small SOBlock trained naturally on digits for two epochs (seconds)."""
    torch.manual_seed(0)
    model = create_model(
        "soblock", width=4, in_channels=1, num_classes=10, method=method, **options
    )
    train = load_dataset("digits", split="train")
    x, y = train.float_images(), train.labels
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(2):
        for idx in torch.randperm(len(y), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def models():
    return {
        "euler": _trained_soblock("euler"),
        "dopri5": _trained_soblock("dopri5", tol=0.1),
    }


def test_outputs_are_the_deployed_models_and_gradients_the_substitutes(models):
    model = models["dopri5"]
    x, y = _digits(16)
    wrapped = SolverSubstitute(model, "fixed", steps=8)
    xr = x.clone().requires_grad_(True)
    out = wrapped(xr)
    with torch.no_grad():
        deployed = model(x)
    assert torch.allclose(out, deployed, atol=1e-6)
    (grad,) = torch.autograd.grad(F.cross_entropy(out, y), xr)
    # independent reference: the same weights with the substitute solver set for good;
    # the chain rule meets the loss at the deployed logits (straight-through)
    reference = create_model(**model.model_config)
    reference.load_state_dict(model.state_dict())
    reference.eval().set_solver(method="rk4", step_size=1 / 8, rtol=0.1, atol=0.1)
    xr2 = x.clone().requires_grad_(True)
    dloss = (deployed.softmax(1) - F.one_hot(y, 10)) / len(y)
    (ref_grad,) = torch.autograd.grad(reference(xr2), xr2, grad_outputs=dloss)
    assert torch.allclose(grad, ref_grad, atol=1e-6)
    # and the deployed solver is back on every block
    assert all(b.solver.method == "dopri5" for b in ode_blocks(model))


def test_deployed_solvers_come_back_after_an_error(models):
    model = models["dopri5"]
    wrapped = SolverSubstitute(model, "per_sample")
    block = ode_blocks(model)[0]

    def fail_in_substitute(module, args):
        if module.solver.step_control == "per_sample":
            raise RuntimeError("failure inside the substitute pass")

    handle = block.register_forward_pre_hook(fail_in_substitute)
    try:
        with pytest.raises(RuntimeError, match="substitute pass"):
            wrapped(torch.rand(2, 1, 8, 8, requires_grad=True))
    finally:
        handle.remove()
    assert all(b.solver.step_control == "batch" for b in ode_blocks(model))


def test_substitutes_of_each_kind():
    dopri = SolverConfig(method="dopri5", rtol=0.1, atol=0.1)
    assert substitute_solver(dopri, "fixed", steps=4).describe() == "rk4 (step 0.25)"
    assert substitute_solver(dopri, "tight").rtol == pytest.approx(1e-3)
    assert substitute_solver(dopri, "per_sample").step_control == "per_sample"
    assert substitute_solver(dopri, "detached").detach_step_size is True
    euler = SolverConfig(method="euler")
    assert substitute_solver(euler, "fixed") == euler  # already exact
    for bad in ({"kind": "exact"}, {"steps": 0}, {"tighten": 0.5}):
        with pytest.raises(AttackInputError):
            substitute_solver(dopri, **bad)
    with pytest.raises(AttackInputError, match="no ODE blocks"):
        SolverSubstitute(create_model("resnet10", width=4, in_channels=1), "fixed")


# dopri5: ≈ 7 s of adaptive-step attacks (the --fast tier runs the Euler model only)
@pytest.mark.parametrize("kind", ["euler", pytest.param("dopri5", marks=pytest.mark.slow)])
def test_adaptive_pgd_is_never_weaker_than_plain_pgd(models, kind):
    """The issue's acceptance: robust accuracy ≤ plain PGD's + 1 point, on every model.

    On 100 images one point is one image. Measured over training seeds 0–4 × 1 and 2 threads,
    Xeon (AVX-512), and seeds 0–2 with AVX2 kernels (ATEN_CPU_CAPABILITY=avx2), 2026-11-29:
    clean 0.88–0.97 (Euler), 0.69–0.96 (dopri5); robust points, adaptive minus plain: 0 for
    every Euler substitute, −16 to 0 for dopri5. Never above 0 — but on dopri5 up to 2 points
    that plain PGD broke survive a substitute (batch-mates move the shared step sizes), so a
    net +1 is possible on another machine, and the 1-point allowance is kept.
    """
    model = models[kind]
    x, y = _digits(100)
    settings = {"eps": 0.1, "steps": 20, "step_size": 0.01, "random_start": False}
    plain = PGD("linf", **settings).run(model, x, y)
    assert plain.clean_accuracy > 0.5  # a model that learned something
    for substitute in ("fixed", "per_sample", "tight", "detached"):
        adaptive = SolverSubstitution(PGD("linf", **settings), substitute).run(model, x, y)
        assert torch.equal(adaptive.clean_correct, plain.clean_correct)
        # counted in images: 0.01 of 100 as a float sum could round either way
        assert int(adaptive.robust.sum()) <= int(plain.robust.sum()) + 1, substitute
        if kind == "euler":  # a point's prediction does not depend on its batch-mates
            assert not (plain.success & ~adaptive.success).any()  # per point, never weaker
        assert adaptive.queries.max() <= 2 * (settings["steps"] + 1)
        # the verdict is the deployed model's: re-check the returned points on it
        with torch.no_grad():
            assert torch.equal(model(adaptive.x_adv).argmax(1) != y, adaptive.success)


def test_adaptive_presets_carry_the_base_settings():
    attack = create_attack("adaptive-pgd1000-linf", substitute="tight", tighten=10.0)
    assert isinstance(attack, SolverSubstitution)
    assert attack.attack.steps == 1000 and attack.threat.eps == pytest.approx(0.031)
    assert attack.budget() == 2 * attack.attack.budget()  # deployed pass, then substitute
    with pytest.raises(AttackInputError, match="accepts"):
        create_attack("adaptive-pgd20-linf", substitut="fixed")
