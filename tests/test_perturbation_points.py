"""Perturbation points: the hidden-layer interface LAD and noise injection use (LAD eq. 5)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustode.models import create_model, list_models
from robustode.nn.perturbation import perturbed

SMALL = {  # small but complete versions of every model, for speed
    "wrn34_10": {"depth": 10, "widen_factor": 1},
    "wrn34_10_soblock": {"depth": 10, "widen_factor": 1},
    "preact_resnet56": {"depth": 8},
    "inresnet56": {"depth": 14},
    "lambda_inresnet56": {"depth": 14},
    "odenet": {"width": 8, "num_blocks": 3},
}


def shift_at(point: str, delta: torch.Tensor):
    """A perturbation adding ``delta`` at ``point`` only."""
    return lambda name, h: h + delta if name == point else h


def small_model(name: str, **options):
    return create_model(name, **{**SMALL.get(name, {"width": 8}), **options}).eval()


@pytest.mark.parametrize("name", list_models())
def test_points_are_visited_once_each_in_the_order_listed(name):
    model = small_model(name, seed=0)
    names = model.perturbation_points()
    assert names and len(set(names)) == len(names)
    visited = []

    def record(point, h):
        visited.append(point)
        return h

    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        plain = model(x)
        with model.perturbed(record):
            same = model(x)
        after = model(x)
    assert visited == names
    torch.testing.assert_close(same, plain, rtol=0, atol=0)
    torch.testing.assert_close(after, plain, rtol=0, atol=0)


def test_the_expected_points_per_family():
    assert small_model("resnet10").perturbation_points() == [
        "stem",
        "layer1.0",
        "layer2.0",
        "layer3.0",
        "layer4.0",
    ]
    assert create_model("preact_resnet56").perturbation_points()[-1] == "layer3.8"
    assert len(create_model("preact_resnet56").perturbation_points()) == 1 + 27
    assert len(create_model("wrn34_10", widen_factor=1).perturbation_points()) == 1 + 15
    assert small_model("sonet").perturbation_points()[:3] == ["stem", "layer1.0", "layer1.1"]


def test_injection_at_the_last_point_shifts_logits_by_the_linear_map():
    """logits = W·mean_hw(h) + b, so adding a constant c per channel at h adds W·c."""
    model = small_model("resnet10", seed=0)
    x = torch.rand(3, 3, 16, 16)
    c = torch.randn(model.linear.in_features)
    with torch.no_grad():
        plain = model(x)
        with model.perturbed(lambda n, h: h + c.view(1, -1, 1, 1) if n == "layer4.0" else h):
            shifted = model(x)
    torch.testing.assert_close(shifted - plain, (model.linear.weight @ c).expand_as(plain))


def test_recorded_gradient_at_the_last_point_is_the_analytic_one():
    """∂CE/∂h for h → mean_hw → linear: (softmax − onehot)·W / (H·W) at every position."""
    model = small_model("resnet10", seed=0)
    x, y = torch.rand(3, 3, 16, 16), torch.tensor([1, 4, 7])
    acts = {}

    def keep(name, h):
        acts[name] = h
        return h

    with model.perturbed(keep):
        logits = model(x)
    loss = F.cross_entropy(logits, y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, [acts["layer4.0"]])
    hw = grad.shape[-1] * grad.shape[-2]
    per_channel = (logits.softmax(1) - F.one_hot(y, 10)) @ model.linear.weight / hw
    torch.testing.assert_close(grad, per_channel.detach()[:, :, None, None].expand_as(grad))


@pytest.mark.parametrize("name", ["sonet", "preact_resnet56", "soblock"])
def test_recorded_gradients_predict_the_loss_change_of_an_injection(name):
    """LAD's two passes agree: ⟨g_n, v⟩ equals the finite-difference slope of the
    loss when v is injected at point n (float64, fixed-step solver; tanh keeps the ODE
    blocks smooth, so a finite difference cannot straddle a kink)."""
    ode = {"method": "rk4", "step_size": 0.5, "activation": "tanh"}
    model = small_model(name, seed=0, **({} if name == "preact_resnet56" else ode)).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=gen)
    y = torch.tensor([3, 5])
    acts = {}

    def keep(point, h):
        acts[point] = h
        return h

    with model.perturbed(keep):
        loss = F.cross_entropy(model(x), y)
    grads = dict(zip(acts, torch.autograd.grad(loss, list(acts.values())), strict=True))
    for point in (model.perturbation_points()[0], model.perturbation_points()[-1]):
        v = torch.randn(acts[point].shape, generator=gen, dtype=torch.float64)
        eps = 1e-6
        with torch.no_grad():
            losses = []
            for sign in (1, -1):
                with model.perturbed(shift_at(point, sign * eps * v)):
                    losses.append(F.cross_entropy(model(x), y))
        slope = (losses[0] - losses[1]) / (2 * eps)
        assert float(slope) == pytest.approx(float((grads[point] * v).sum()), rel=1e-5, abs=1e-9)


def test_bad_uses_are_refused_and_state_is_restored():
    model = small_model("resnet10", seed=0)
    x = torch.rand(1, 3, 8, 8)
    wrong_shape = "perturbation at 'stem' must return a tensor of shape"
    with pytest.raises(ValueError, match=wrong_shape), model.perturbed(lambda n, h: h[:, :1]):
        model(x)
    with pytest.raises(RuntimeError, match="boom"), model.perturbed(lambda n, h: h):
        raise RuntimeError("boom")
    assert all(p.fn is None for p in model.modules() if hasattr(p, "fn"))
    plain = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="has no perturbation points"):
        perturbed(plain, lambda n, h: h).__enter__()


def test_nested_perturbations_restore_the_outer_one():
    model = small_model("resnet10", seed=0)
    seen = []
    with model.perturbed(lambda n, h: seen.append(("outer", n)) or h):
        with model.perturbed(lambda n, h: seen.append(("inner", n)) or h):
            model(torch.rand(1, 3, 8, 8))
        model(torch.rand(1, 3, 8, 8))
    assert {who for who, _ in seen[:5]} == {"inner"} and {who for who, _ in seen[5:]} == {"outer"}


def test_contexts_left_out_of_order_remove_only_their_own_function():
    model = small_model("resnet10", seed=0)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        plain = model(x)
        outer, inner = model.perturbed(lambda n, h: h + 1), model.perturbed(lambda n, h: h)
        outer.__enter__()
        inner.__enter__()
        outer.__exit__(None, None, None)
        torch.testing.assert_close(model(x), plain, rtol=0, atol=0)  # the inner one acts
        inner.__exit__(None, None, None)
    assert all(p.fn is None for p in model.modules() if hasattr(p, "fn"))


def test_copies_and_checkpoints_never_carry_an_active_perturbation():
    class Double(nn.Module):  # a module as the function must not become a submodule
        def forward(self, name, h):
            return 2 * h

    model = small_model("sonet", seed=0)
    keys = set(model.state_dict())
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        plain = model(x)
        with model.perturbed(Double()):
            assert set(model.state_dict()) == keys
            clone = copy.deepcopy(model)
            buffer = io.BytesIO()
            torch.save(model, buffer)  # ODE models pickle (no lambdas inside)
            assert not torch.equal(model(x), plain)
        torch.testing.assert_close(clone(x), plain, rtol=0, atol=0)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        torch.testing.assert_close(loaded(x), plain, rtol=0, atol=0)
