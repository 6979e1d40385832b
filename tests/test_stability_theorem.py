"""SONet Theorem 3.1 and eq. (4) as tests, on the blocks robustode ships."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from robustode.experiments.stability import StabilitySettings, run_stability
from robustode.nn import SkewConvField, SkewLinearField, channel_copy
from robustode.ode import odeint

F64 = torch.float64


def _state_norm(x, z):
    return (x.flatten(1).pow(2).sum(1) + z.flatten(1).pow(2).sum(1)).sqrt()


@pytest.mark.parametrize("stride", [1, 2])
def test_linearised_conv_block_preserves_the_norm(stride):
    """Identity σ, γ = 0: the flow of the skew system is orthogonal (eq. 4)."""
    torch.manual_seed(0)
    field = SkewConvField(3, 5, stride, norm=None, activation="identity").to(F64)
    x = torch.randn(4, 3, 8, 8, dtype=F64)
    z = channel_copy(x, 5, stride)
    t = torch.linspace(0, 10, 6, dtype=F64)
    with torch.no_grad():
        xs, zs = odeint(field, (x, z), t, rtol=1e-7, atol=1e-7, method="dopri5")
    start = _state_norm(x, z)
    for i in range(1, len(t)):
        rel = ((_state_norm(xs[i], zs[i]) - start).abs() / start).max()
        assert float(rel) <= 1e-4, f"t={float(t[i])}: relative norm change {float(rel):.2e}"


def test_linearised_linear_block_preserves_the_norm():
    torch.manual_seed(1)
    field = SkewLinearField(6, 4, activation="identity", bias=False).to(F64)
    x, z = torch.randn(5, 6, dtype=F64), torch.randn(5, 4, dtype=F64)
    with torch.no_grad():
        xs, zs = odeint(field, (x, z), torch.tensor([0.0, 10.0], dtype=F64), rtol=1e-7, atol=1e-7)
    rel = ((_state_norm(xs[-1], zs[-1]) - _state_norm(x, z)).abs() / _state_norm(x, z)).max()
    assert float(rel) <= 1e-4


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_transpose_is_the_exact_adjoint(stride):
    """⟨W x, z⟩ = ⟨x, Wᵀ z⟩ — what makes the conv block's linear part skew."""
    torch.manual_seed(2)
    field = SkewConvField(3, 4, stride, norm=None, activation="identity").to(F64)
    x = torch.randn(2, 3, 9, 9, dtype=F64)
    z = torch.randn(field.z_shape(x.shape, 4), dtype=F64)
    with torch.no_grad():
        dx, dz = field(torch.zeros((), dtype=F64), (x, z))
    # energy ⟨x, dx⟩ + ⟨z, dz⟩ = −⟨x, Wᵀz⟩ + ⟨z, Wx⟩ = 0
    energy = (x * dx).sum() + (z * dz).sum()
    assert abs(float(energy)) <= 1e-10 * float(x.norm() * z.norm())


@pytest.mark.parametrize(
    ("stride", "kernel_size", "size"),
    [(1, 3, 9), (2, 4, 8), (2, 4, 9), (2, 3, 8), (2, 3, 9), (2, 3, 2)],
)
def test_skew_field_uses_the_exact_transpose_of_its_convolution(stride, kernel_size, size):
    """The z-field is W x and the x-field −Wᵀ z, Wᵀ the adjoint on x's shape:
    ⟨W x, z⟩ = ⟨x, Wᵀ z⟩ for random x, z, and Wᵀ z equals the vector–Jacobian product of
    the convolution (autograd's transpose, an independent computation). The 3×3 stride-2
    kernel (the paper's Fig. 2) needs output_padding on even sizes for x's shape."""
    torch.manual_seed(2)
    field = SkewConvField(
        3, 4, stride, kernel_size=kernel_size, norm=None, activation="identity"
    ).to(F64)
    x = torch.randn(2, 3, size, size, dtype=F64, requires_grad=True)
    z = torch.randn(field.z_shape(x.shape, 4), dtype=F64)
    dx, dz = field(torch.zeros((), dtype=F64), (x, z))
    assert dx.shape == x.shape and dz.shape == z.shape
    w_x, wt_z = dz, -dx  # W x and Wᵀ z
    lhs, rhs = (w_x * z).sum(), (x * wt_z).sum()
    scale = float((x.norm() * z.norm() * field.weight.norm()).detach())
    assert abs(float(lhs - rhs)) <= 1e-12 * scale
    conv = torch.nn.functional.conv2d(x, field.weight, stride=stride, padding=1)
    (vjp,) = torch.autograd.grad(conv, x, z)
    assert float((vjp - wt_z).abs().max()) <= 1e-12 * float(vjp.abs().max())


def _field_jacobian(field, x, z):
    nx = x.numel()

    def flat(v):
        xs, zs = v[:nx].view_as(x), v[nx:].view_as(z)
        dx, dz = field(torch.zeros((), dtype=F64), (xs, zs))
        return torch.cat([dx.reshape(-1), dz.reshape(-1)])

    return jacobian(flat, torch.cat([x.reshape(-1), z.reshape(-1)]))


def _max_real_eigenvalue(field, make_state, n_states=20):
    worst = -float("inf")
    for _ in range(n_states):
        x, z = make_state()
        eig = torch.linalg.eigvals(_field_jacobian(field, x, z))
        worst = max(worst, float(eig.real.max()))
    return worst


@pytest.mark.parametrize("placement", ["after", "before"])
def test_linear_block_jacobian_eigenvalues_have_negative_real_part(placement):
    """γ > 0, LeakyReLU: Re λ(J) < 0 at ≥ 20 random states (Theorem 3.1)."""
    torch.manual_seed(3)
    gamma = 0.05
    field = SkewLinearField(6, 4, gamma=gamma, placement=placement).to(F64)
    state = lambda: (torch.randn(1, 6, dtype=F64) * 3, torch.randn(1, 4, dtype=F64) * 3)  # noqa: E731
    worst = _max_real_eigenvalue(field, state)
    assert worst < 0
    if placement == "before":  # J = A·D − γI with A skew: Re λ = −γ exactly
        assert worst == pytest.approx(-gamma, abs=1e-9)


def test_conv_block_jacobian_eigenvalues_have_negative_real_part():
    torch.manual_seed(4)
    field = SkewConvField(2, 3, 1, gamma=0.1, norm=None).to(F64)
    state = lambda: (torch.randn(1, 2, 4, 4, dtype=F64), torch.randn(1, 3, 4, 4, dtype=F64))  # noqa: E731
    assert _max_real_eigenvalue(field, state) < 0


def test_unconstrained_block_has_unstable_jacobians():
    """The check above can fail: without W⁽²⁾ = −Wᵀ, eigenvalues cross into Re > 0."""
    torch.manual_seed(4)
    field = SkewConvField(2, 3, 1, gamma=0.1, norm=None, skew=False).to(F64)
    state = lambda: (torch.randn(1, 2, 4, 4, dtype=F64), torch.randn(1, 3, 4, 4, dtype=F64))  # noqa: E731
    assert _max_real_eigenvalue(field, state) > 0


# seed 1 takes ≈ 20 s on 2 cores, the others ≈ 2 s: the --fast tier runs seeds 0 and 2
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), 2])
def test_stability_radius_skew_bounded_unconstrained_grows(seed):
    """Inputs 1e-3 apart: the skew block's output distance stays within 10·δ for
    t0 ∈ {1, 5, 20, 50}; the unconstrained block's exceeds 100·δ by t0 = 50."""
    result = run_stability(StabilitySettings(seed=seed))
    delta = result.settings.delta
    assert max(result.skew) <= 10 * delta, result.to_markdown()
    assert result.unconstrained[-1] >= 100 * delta, result.to_markdown()
    assert result.unconstrained[-1] >= 10 * result.skew[-1]


def test_stability_experiment_is_deterministic_for_a_seed():
    settings = StabilitySettings(t0s=(1.0, 5.0), seed=7)
    first, second = run_stability(settings), run_stability(settings)
    assert first.skew == second.skew and first.unconstrained == second.unconstrained
