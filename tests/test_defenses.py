"""Training defenses, each checked against an independent computation.

LAD (eq. 5) and LAD-SM (eq. 8) against hand-written forward passes of
tiny residual chains; TRADES against the official algorithm written out here;
PGD-AT's examples against the threat model; noise against its measured
standard deviation; every defense for one optimiser step on the damping
baselines and an ODE model.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustode.defenses import (
    DefenseConfigError,
    NoisyEnsemble,
    batch_generator,
    create_defense,
    lad_sm_offsets,
)
from robustode.models import create_model
from robustode.nn.perturbation import PerturbationPoint, perturbed

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------- tiny models


class Residual(nn.Module):
    """x + tanh(W x + b): one residual block x_{n+1} = x_n + f_n(x_n)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.linear(x))


class Widen(nn.Module):
    """A non-residual block that changes the state's shape (a stage transition)."""

    def __init__(self, width_in: int, width_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width_in, width_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(x))


class Chain(nn.Module):
    """stem → point → (block → point)* → head; ``seen`` keeps what flowed on at each point.

    The tests' reference computations use ``stem``, ``blocks`` and ``head``
    directly and never the points.
    """

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.points = nn.ModuleList(PerturbationPoint(f"x{n}") for n in range(len(blocks) + 1))
        self.seen: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.points[0](self.stem(x))
        self.seen["x0"] = h.detach()
        for n, block in enumerate(self.blocks, start=1):
            h = self.points[n](block(h))
            self.seen[f"x{n}"] = h.detach()
        return self.head(h)


def chain(widths: list[int], *, inputs: int = 5, classes: int = 3, seed: int = 0) -> Chain:
    """A chain whose states have the given widths: a residual block where the width stays."""
    torch.manual_seed(seed)
    blocks: list[nn.Module] = [
        Residual(b) if a == b else Widen(a, b) for a, b in itertools.pairwise(widths)
    ]
    return Chain(nn.Linear(inputs, widths[0]), blocks, nn.Linear(widths[-1], classes))


def batch(n: int = 6, inputs: int = 5, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.randn(n, inputs, generator=g), torch.randint(0, classes, (n,), generator=g)


def unperturbed_gradients(model: Chain, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """g_n = ∂L/∂x_n of the batch-mean CE, computed without the perturbation points."""
    states = [model.stem(x)]
    for block in model.blocks:
        states.append(block(states[-1]))
    loss = F.cross_entropy(model.head(states[-1]), y)
    return list(torch.autograd.grad(loss, states))


def images(n: int = 4, size: int = 16, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def small_preact(seed: int = 0) -> nn.Module:
    return create_model("preact_resnet56", depth=8, seed=seed).train()


# ------------------------------------------------------------------------ LAD


def test_lad_pass_two_adds_eta_times_the_recorded_gradient_at_each_point():
    model, (x, y), eta = chain([4, 4]), batch(), 50.0
    g0, g1 = unperturbed_gradients(model, x, y)

    loss, stats = create_defense("lad", eta=eta)(model, x, y)

    # pass 2 by hand: each state shifted by η·g_n (eq. 5), the skip path carrying the shift
    x0 = model.stem(x) + eta * g0
    x1 = model.blocks[0](x0) + eta * g1
    torch.testing.assert_close(model.seen["x0"], x0.detach())
    torch.testing.assert_close(model.seen["x1"], x1.detach())
    # what pass 2 injected at the second point, measured from the activations it saw
    injected = model.seen["x1"] - model.blocks[0](model.seen["x0"]).detach()
    torch.testing.assert_close(injected, eta * g1)
    torch.testing.assert_close(loss, F.cross_entropy(model.head(x1), y))
    assert stats["lad_ce"] == pytest.approx(loss.item())
    # pass 1 left no parameter gradient behind; the loss treats g as a constant
    assert all(p.grad is None for p in model.parameters())
    loss.backward()
    expected = torch.autograd.grad(
        F.cross_entropy(model.head(x1.detach()), y), list(model.head.parameters())
    )
    torch.testing.assert_close(model.head.weight.grad, expected[0])


def test_eq16_ratio_is_the_first_blocks_output_norm_over_the_first_gradient_norm():
    """LAD §4.5 eq. 16, against the chain written out: ‖x_1‖₂ / ‖∂L/∂x_0‖₂ (batch mean)."""
    from robustode.defenses.lad import eq16_ratio

    model, (x, y) = chain([4, 4]), batch()
    g0, _ = unperturbed_gradients(model, x, y)
    x1 = model.blocks[0](model.stem(x))
    expected = (x1.norm() / g0.norm()).item()
    assert eq16_ratio(model, x, y) == pytest.approx(expected, rel=1e-6)
    _, stats = create_defense("lad", eta=0.0)(model, x, y)  # pass 1 at the same input
    assert float(stats["eq16_ratio"]) == pytest.approx(expected, rel=1e-6)


def test_lad_eta_defaults_to_the_papers_for_the_data():
    assert create_defense("lad").eta == 50.0
    assert create_defense("lad", context={"data": "cifar100"}).eta == 1000.0
    assert create_defense("lad_sm", context={"data": "cifar10"}).eta == 50.0
    assert create_defense("lad", eta=7.0, context={"data": "cifar100"}).eta == 7.0
    noisy = create_defense("noise", base="lad", context={"data": "cifar100"})
    assert noisy.inner.eta == 1000.0
    with pytest.raises(ValueError, match="has no option 'data'"):
        create_defense("lad", data="cifar100")  # context, not an option


def test_lad_sm_matches_eq_8_step_by_step_on_three_residual_blocks():
    model, (x, y), eta = chain([2, 2, 2, 2], inputs=2), batch(inputs=2), 20.0
    g = unperturbed_gradients(model, x, y)

    loss, _ = create_defense("lad_sm", eta=eta)(model, x, y)

    x_n = model.stem(x)
    entering = []
    for n, block in enumerate(model.blocks):
        x_tilde = x_n + eta / 2 * g[n]  # x̃_n = x_n + (η/2)·∂L/∂x_n
        entering.append(x_tilde)
        x_hat = block(x_tilde)  # x̂_n = x̃_n + f_n(x̃_n)
        x_n = x_hat + eta / 4 * (g[n] + g[n + 1])  # x_{n+1} = x̂_n + (η/4)(g_n + g_{n+1})
    for n in range(3):
        torch.testing.assert_close(model.seen[f"x{n}"], entering[n].detach())
    torch.testing.assert_close(model.seen["x3"], x_n.detach())  # the last state: no pre-step
    torch.testing.assert_close(loss, F.cross_entropy(model.head(x_n), y))


def test_lad_sm_at_a_shape_change_uses_the_new_gradient_alone():
    """The documented rule: a(n+½) ≈ g_{n+1} where g_n has another shape, so x_{n+1} gets η·g."""
    model, (x, y), eta = chain([2, 2, 3, 3], inputs=2), batch(inputs=2), 10.0
    g = unperturbed_gradients(model, x, y)

    loss, _ = create_defense("lad_sm", eta=eta)(model, x, y)

    x_n = model.stem(x)
    for n, block in enumerate(model.blocks):
        x_hat = block(x_n + eta / 2 * g[n])
        same = g[n].shape == g[n + 1].shape
        x_n = x_hat + (eta / 4 * (g[n] + g[n + 1]) if same else eta / 2 * g[n + 1])
    assert g[1].shape != g[2].shape
    torch.testing.assert_close(model.seen["x3"], x_n.detach())
    torch.testing.assert_close(loss, F.cross_entropy(model.head(x_n), y))


def test_lad_sm_offsets_boundary_and_interior_terms():
    g = [torch.randn(2, 3) for _ in range(4)] + [torch.randn(2, 5)]
    eta = 8.0
    off = lad_sm_offsets(g, eta)
    torch.testing.assert_close(off[0], eta / 2 * g[0])  # x_0: pre-step only
    for n in (1, 2, 3):
        torch.testing.assert_close(off[n], eta / 4 * g[n - 1] + 3 * eta / 4 * g[n])
    torch.testing.assert_close(off[4], eta / 2 * g[4])  # last point after a shape change
    same_shape_last = lad_sm_offsets(g[:4], eta)[3]
    torch.testing.assert_close(same_shape_last, eta / 4 * (g[2] + g[3]))
    with pytest.raises(DefenseConfigError, match="at least two"):
        lad_sm_offsets(g[:1], eta)


def test_lad_composes_with_an_enclosing_perturbation_noise_first():
    model, (x, y), eta = chain([4, 4]), batch(), 5.0
    shift = 0.3  # stands in for noise: a known perturbation already in effect
    states = [model.stem(x) + shift]
    states.append(model.blocks[0](states[0]) + shift)
    g = torch.autograd.grad(F.cross_entropy(model.head(states[1]), y), states)

    with perturbed(model, lambda name, h: h + shift):
        loss, _ = create_defense("lad", eta=eta)(model, x, y)

    x0 = model.stem(x) + shift + eta * g[0]
    x1 = model.blocks[0](x0) + shift + eta * g[1]
    torch.testing.assert_close(model.seen["x1"], x1.detach())
    torch.testing.assert_close(loss, F.cross_entropy(model.head(x1), y))


@pytest.mark.parametrize("name", ["lad", "lad_sm"])
def test_lad_with_eta_zero_is_its_base_defense(name):
    """η = 0 gives the base back (for TRADES with γ = 1: the LAD term has weight 1 − γ)."""
    x, y = images()
    cases = [
        ({"base": "natural"}, "natural", {}),
        ({"base": "pgd_at", "steps": 2}, "pgd_at", {"steps": 2}),
        (
            {"base": "trades", "steps": 2, "gamma": 1.0},
            "trades",
            {"steps": 2, "eps": 8 / 255, "step_size": 2 / 255, "beta": 6.0},
        ),
    ]
    model = small_preact()
    for lad_options, base, base_options in cases:
        a, b = copy.deepcopy(model), copy.deepcopy(model)
        torch.manual_seed(3)
        lad_loss, _ = create_defense(name, eta=0.0, **lad_options)(a, x, y)
        torch.manual_seed(3)
        base_loss, _ = create_defense(base, **base_options)(b, x, y)
        torch.testing.assert_close(lad_loss, base_loss, msg=f"{name} on {base}")


def test_lad_trades_loss_mixes_gamma_ce_lad_and_beta_kl():
    x, y = images()
    model = small_preact()
    defense = create_defense("lad", base="trades", eta=30.0, steps=2, gamma=0.25, beta=2.0)
    torch.manual_seed(4)
    loss, stats = defense(copy.deepcopy(model), x, y)
    b = copy.deepcopy(model)
    torch.manual_seed(4)
    x_adv = defense.adversarial_examples(b, x, y)
    ce_nat = F.cross_entropy(b(x), y)
    kl = F.kl_div(F.log_softmax(b(x_adv), 1), F.softmax(b(x), 1), reduction="sum") / len(x)
    expected = 0.25 * ce_nat + 0.75 * stats["lad_ce"] + 2.0 * kl
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
    assert stats["kl"] == pytest.approx(kl.item(), rel=1e-5, abs=1e-7)


# --------------------------------------------------------------------- TRADES


def test_trades_loss_equals_the_official_algorithm_written_out():
    x, y = images()
    model = small_preact()
    eps, step, steps, beta = 0.031, 0.007, 3, 6.0
    defense = create_defense("trades", beta=beta, eps=eps, step_size=step, steps=steps)
    torch.manual_seed(5)
    trained = copy.deepcopy(model)
    loss, stats = defense(trained, x, y)

    ref = copy.deepcopy(model)
    torch.manual_seed(5)
    generator = batch_generator(x.device)  # the documented source of the batch's randomness
    ref.eval()
    x_adv = x + 0.001 * torch.randn(x.shape, generator=generator)
    for _ in range(steps):
        x_adv.requires_grad_()
        kl = F.kl_div(F.log_softmax(ref(x_adv), 1), F.softmax(ref(x), 1).detach(), reduction="sum")
        (grad,) = torch.autograd.grad(kl, x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    ref.train()
    loss_natural = F.cross_entropy(ref(x), y)
    loss_robust = F.kl_div(F.log_softmax(ref(x_adv), 1), F.softmax(ref(x), 1), reduction="sum")
    expected = loss_natural + beta * loss_robust / len(x)

    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # gradients flow through both f(x) and f(x') of the KL term, as in the official loss
    loss.backward()
    expected.backward()
    for p, q in zip(trained.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    assert stats["kl"] == pytest.approx((loss_robust / len(x)).item(), rel=1e-4, abs=1e-7)
    assert stats["ce"] == pytest.approx(loss_natural.item(), rel=1e-6)


# --------------------------------------------------------------------- PGD-AT


def test_pgd_at_examples_stay_in_the_threat_model_and_the_loss_is_their_ce():
    x, y = images()
    model = small_preact()
    model.layer1.eval()  # a submodule with its own flag: must come back as it was
    flags = [m.training for m in model.modules()]
    eps = 8 / 255
    defense = create_defense("pgd_at", eps=eps, steps=3)

    a = copy.deepcopy(model)
    torch.manual_seed(6)
    x_adv = defense.adversarial_examples(a, x, y)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > eps / 2 and not x_adv.requires_grad

    b = copy.deepcopy(model)
    torch.manual_seed(6)
    loss, stats = defense(b, x, y)
    torch.testing.assert_close(loss, F.cross_entropy(a(x_adv), y))
    assert [m.training for m in b.modules()] == flags
    assert set(stats) >= {"loss", "train_correct", "adv_correct"}


def test_pgd_at_random_start_is_fresh_per_batch_and_fixed_by_the_global_seed():
    x, y = images()
    model = small_preact().eval()
    defense = create_defense("pgd_at", steps=1)
    torch.manual_seed(8)
    first = defense.adversarial_examples(model, x, y)
    second = defense.adversarial_examples(model, x, y)
    torch.manual_seed(8)
    again = defense.adversarial_examples(model, x, y)
    assert not torch.equal(first, second)
    assert torch.equal(first, again)


# ---------------------------------------------------------------------- noise


@pytest.mark.parametrize("relative", [False, True])
def test_noise_std_absolute_or_relative_to_the_activation(relative):
    model = chain([256, 256], inputs=8)
    with torch.no_grad():
        model.stem.weight.mul_(20.0)  # activations with a std far from 1
    x, y = batch(n=64, inputs=8)
    clean = model.stem(x).detach()
    torch.manual_seed(9)
    create_defense("noise", std=0.1, relative=relative)(model, x, y)
    measured = (model.seen["x0"] - clean).std().item()
    expected = 0.1 * clean.std().item() if relative else 0.1
    assert clean.std().item() > 3
    assert measured == pytest.approx(expected, rel=0.03)


def test_noisy_ensemble_averages_k_noisy_passes():
    model = chain([8, 8], inputs=5)
    x, _ = batch(n=3)
    ensemble = NoisyEnsemble(model, k=4, std=0.2, seed=11)
    out = ensemble(x)
    generator = torch.Generator().manual_seed(11)
    passes = []
    noise = lambda name, h: h + 0.2 * torch.randn(h.shape, generator=generator)  # noqa: E731
    with perturbed(model, noise):
        for _ in range(4):
            passes.append(model(x))
    torch.testing.assert_close(out, torch.stack(passes).mean(0))
    # more passes, less variance: ≈ 1/k for a head linear in the noise
    with torch.no_grad():
        one = torch.stack([NoisyEnsemble(model, k=1, seed=s)(x) for s in range(40)])
        many = torch.stack([NoisyEnsemble(model, k=64, seed=s)(x) for s in range(40)])
    ratio = (one.var(0).mean() / many.var(0).mean()).item()
    assert 30 < ratio < 130


# ------------------------------------------------------------------- smoke


DEFENSES = [
    ("natural", {}),
    ("pgd_at", {"steps": 2}),
    ("trades", {"steps": 2}),
    ("lad", {}),
    ("lad", {"base": "pgd_at", "steps": 2}),
    ("lad_sm", {"base": "trades", "steps": 2}),
    ("noise", {"relative": True}),
    ("noise", {"base": "lad_sm", "base_options": {"base": "pgd_at", "steps": 1}}),
]
MODELS = {
    "inresnet56": {"depth": 14},
    "lambda_inresnet56": {"depth": 14},
    "soblock": {"width": 4, "method": "euler", "step_size": 0.5},
}


@pytest.mark.parametrize("model_name", list(MODELS))
def test_every_defense_takes_an_optimizer_step(model_name):
    x, y = images(n=4, size=16)
    model = create_model(model_name, seed=0, **MODELS[model_name]).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for name, options in DEFENSES:
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad()
        loss, stats = create_defense(name, **options)(model, x, y)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss), (name, options)
        assert all(isinstance(v, float) for v in stats.values())
        assert stats["loss"] == pytest.approx(loss.item()) and "train_correct" in stats
        assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
        assert model.training


def test_the_same_global_seed_gives_the_same_loss():
    x, y = images()
    model = small_preact()
    for name, options in DEFENSES:
        losses = []
        for _ in range(2):
            torch.manual_seed(10)
            loss, _ = create_defense(name, **options)(copy.deepcopy(model), x, y)
            losses.append(loss)
        assert torch.equal(losses[0], losses[1]), name


# --------------------------------------------------------------------- errors


def test_unknown_option_lists_the_accepted_ones():
    with pytest.raises(DefenseConfigError, match="accepts: eps, step_size, steps"):
        create_defense("pgd_at", epsilon=0.1)


@pytest.mark.parametrize(
    ("name", "options", "words"),
    [
        ("pgd_at", {"eps": -0.1}, "eps must be a finite number > 0"),
        ("pgd_at", {"steps": 0}, "steps must be an integer ≥ 1"),
        ("pgd_at", {"eps": 8}, "eps must be ≤ 1"),
        ("trades", {"beta": -1.0}, "beta must be a finite number ≥ 0"),
        ("trades", {"step_size": 0.0}, "step_size must be a finite number > 0"),
        ("lad", {"eta": -5.0}, "eta must be a finite number ≥ 0"),
        ("lad_sm", {"base": "trades", "gamma": 2.0}, "gamma must be a number in [0, 1]"),
        ("lad", {"base": "madry"}, "base must be one of"),
        ("lad", {"eps": 0.1}, "'eps' has no effect with base='natural'"),
        ("lad", {"base": "trades", "random_start": False}, "'random_start' has no effect"),
        ("noise", {"std": -1.0}, "std must be a finite number ≥ 0"),
        ("noise", {"base": "pgd_at", "base_options": {"stepz": 3}}, "'pgd_at' has no option"),
        ("noise", {"base": "noise"}, "base must be one of"),
    ],
)
def test_bad_values_are_one_clear_line(name, options, words):
    with pytest.raises(DefenseConfigError) as error:
        create_defense(name, **options)
    message = str(error.value)
    assert words in message and "\n" not in message


@pytest.mark.parametrize("name", ["lad", "lad_sm", "noise"])
def test_a_model_without_perturbation_points_is_refused_at_call_time(name):
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.rand(2, 3, 2, 2), torch.tensor([0, 1])
    defense = create_defense(name)
    with pytest.raises(DefenseConfigError, match="has no perturbation points"):
        defense(model, x, y)
    with pytest.raises(DefenseConfigError, match="has no perturbation points"):
        NoisyEnsemble(model)
