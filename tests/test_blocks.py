"""The ODE blocks: shapes, initial states, options reaching the solver, and
agreement with torchdiffeq on the reference SONet configuration."""

from __future__ import annotations

import pytest
import torch

from robustode.nn import (
    ChannelCopy,
    NeuralODEBlock,
    SkewConvODE,
    SkewLinearODE,
    channel_copy,
    group_norm,
)
from robustode.ode import SolverConfig, SolverError


def test_channel_copy_repeats_then_appends_the_first_channels():
    x = torch.arange(3.0).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    z = channel_copy(x, 8)
    assert z[0, :, 0, 0].tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert ChannelCopy(2)(x)[0, :, 0, 0].tolist() == [0, 1]


def test_channel_copy_stride_two_downsamples_by_nearest_neighbour():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    z = channel_copy(x, 2, stride=2)
    assert z.shape == (1, 2, 2, 2)
    assert z[0, 0].tolist() == [[0.0, 2.0], [8.0, 10.0]]


@pytest.mark.parametrize(
    ("c_in", "c_out", "stride", "size", "out_size"),
    [(3, 16, 1, 32, 32), (16, 32, 2, 32, 16), (1, 8, 1, 8, 8), (8, 16, 2, 8, 4), (3, 8, 2, 7, 3)],
)
def test_skew_conv_block_shapes(c_in, c_out, stride, size, out_size):
    block = SkewConvODE(c_in, c_out, stride, method="euler")
    x = torch.rand(2, c_in, size, size, requires_grad=True)
    z = block(x)
    assert z.shape == (2, c_out, out_size, out_size)
    z.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize(("size", "out_size"), [(32, 16), (8, 4), (7, 4), (9, 5), (2, 1)])
def test_3x3_stride_2_block_gives_the_ceil_half_size(size, out_size):
    """The paper's 3×3 stride-2 block (padding 1): ⌈H/2⌉, z(0) every second pixel."""
    block = SkewConvODE(4, 8, 2, kernel_size=3, method="euler")
    assert block.field.weight.shape == (8, 4, 3, 3)
    x = torch.rand(2, 4, size, size, requires_grad=True)
    _, z0 = block.initial_state(x)
    assert z0.shape == (2, 8, out_size, out_size)
    assert torch.equal(z0[:, :4], x[..., ::2, ::2].detach())
    z = block(x)
    assert z.shape == (2, 8, out_size, out_size)
    z.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_channel_copy_to_a_given_size_agrees_with_the_reference_where_sizes_agree():
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(channel_copy(x, 6, 2, size=(4, 4)), channel_copy(x, 6, 2))
    odd = torch.rand(1, 3, 7, 7)
    assert channel_copy(odd, 3, 2).shape[-1] == 3
    assert torch.equal(channel_copy(odd, 3, 2, size=(4, 4)), odd[..., ::2, ::2])
    with pytest.raises(ValueError, match="cannot give a 5×5 z"):
        channel_copy(odd, 3, 2, size=(5, 5))


def test_reference_defaults_are_documented_choices():
    block = SkewConvODE(3, 64)
    assert block.solver.method == "dopri5" and block.solver.rtol == block.solver.atol == 0.1
    assert block.field.gamma == 0.0 and block.z0 == "channel_copy"
    assert block.field.weight.shape == (64, 3, 3, 3)
    assert SkewConvODE(64, 128, 2).field.weight.shape == (128, 64, 4, 4)
    assert isinstance(block.field.norm_x_in, torch.nn.GroupNorm)
    assert group_norm(3).num_groups == 3 and group_norm(64).num_groups == 8
    assert group_norm(12).num_groups == 4
    head = SkewLinearODE(512, 10)
    assert head.z0 == 0.1 and head.field.weight.shape == (512, 10)


def test_block_records_its_last_solve_and_solver_can_be_swapped():
    torch.manual_seed(0)
    block = SkewConvODE(3, 8)
    x = torch.rand(4, 3, 8, 8)
    block(x)
    adaptive_nfe = block.nfe
    assert block.last_record.num_accepted >= 1
    assert adaptive_nfe == 2 + 6 * block.last_record.num_steps
    block.solver = block.solver.replace(method="rk4", step_size=0.25)
    block(x)
    assert block.nfe == 16 and block.last_record.num_accepted == 4


def test_per_sample_block_output_is_independent_of_the_batch():
    torch.manual_seed(1)
    block = SkewConvODE(3, 8, step_control="per_sample", tol=1e-2).double()
    x = torch.rand(5, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        full = block(x)
        alone = torch.cat([block(x[i : i + 1]) for i in range(5)])
    assert float((full - alone).abs().max() / alone.abs().max()) <= 1e-6


def test_batch_block_output_depends_on_the_batch():
    """The torchdiffeq property docs/references.md reports: batch-mates move an image's logits."""
    torch.manual_seed(1)
    block = SkewConvODE(3, 8, tol=0.1)
    x = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        full = block(x)
        alone = torch.cat([block(x[i : i + 1]) for i in range(5)])
    assert (full - alone).abs().max() > 1e-5


def test_adjoint_block_gradients_match_backprop():
    """With a smooth activation the adjoint reproduces backprop's gradients.

    (With LeakyReLU's kink, the backward reconstruction of the state is inexact:
    torchdiffeq's adjoint and ours then agree with each other, not with
    backprop — docs/ode-engine.md gives the figures.)"""
    torch.manual_seed(2)
    kw = dict(method="dopri5", tol=1e-6, activation="tanh")
    a = SkewConvODE(2, 4, **kw).double()
    b = SkewConvODE(2, 4, adjoint=True, **kw).double()
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 2, 6, 6, dtype=torch.float64)
    ga = torch.autograd.grad(a(x).pow(2).sum(), list(a.parameters()))
    gb = torch.autograd.grad(b(x).pow(2).sum(), list(b.parameters()))
    scale = max(float(u.abs().max()) for u in ga)
    for u, v in zip(ga, gb, strict=True):
        assert float((u - v).abs().max()) <= 1e-4 * scale


@pytest.mark.parametrize("z0", ["zeros", "channel_copy"])
def test_block_gradients_are_finite_and_match_torchdiffeq(z0):
    """z(0) = 0 gives dx/dt = 0 at t = 0 — a zero norm in the first-step selection."""
    pytest.importorskip("torchdiffeq")
    torch.manual_seed(6)
    native = SkewConvODE(3, 8, z0=z0)
    ref = SkewConvODE(3, 8, z0=z0, backend="torchdiffeq")
    ref.load_state_dict(native.state_dict())
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    ga = torch.autograd.grad(native(x).sum(), [x, *native.parameters()])
    gb = torch.autograd.grad(ref(x).sum(), [x, *ref.parameters()])
    scale = max(float(g.abs().max()) for g in gb)
    for a, b in zip(ga, gb, strict=True):
        assert torch.isfinite(a).all()
        assert float((a - b).abs().max()) <= 1e-4 * scale


def test_linear_and_neural_ode_blocks():
    torch.manual_seed(3)
    head = SkewLinearODE(16, 10, placement="after", z0=1.0)
    assert head(torch.randn(3, 16)).shape == (3, 10)
    node = NeuralODEBlock(8, step_control="per_sample")
    assert node.solver.rtol == 0.1  # the SONet reference ODENet's tolerance
    assert node(torch.randn(2, 8, 5, 5)).shape == (2, 8, 5, 5)


def test_reference_block_agrees_with_torchdiffeq():
    """The SOBlock stem as the reference ran it: same grid, NFE and output."""
    pytest.importorskip("torchdiffeq")
    torch.manual_seed(4)
    native = SkewConvODE(3, 16, tol=0.1).double()
    ref = SkewConvODE(3, 16, tol=0.1, backend="torchdiffeq").double()
    ref.load_state_dict(native.state_dict())
    x = torch.rand(8, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        a, b = native(x), ref(x)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)
    steps_a, steps_b = native.last_record.accepted_steps(), ref.last_record.accepted_steps()
    assert len(steps_a) == len(steps_b)
    assert all(abs(p[0] - q[0]) < 1e-9 for p, q in zip(steps_a, steps_b, strict=True))
    assert native.nfe == ref.nfe


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "rk45"}, "unknown ODE method 'rk45'"),
        (
            {"method": "implicit_adams", "step_control": "per_sample"},
            "cannot be combined with step_control='per_sample'",
        ),
        ({"tol": 0.0}, "rtol must be a positive number"),
        ({"atol": -1e-3}, "atol must be a positive number"),
        ({"step_size": -0.1}, "step_size must be a positive"),
        ({"t1": 0}, "t1"),
        ({"step_control": "image"}, "unknown step_control"),
        ({"solver_typo": 1}, r"unknown solver option\(s\) \['solver_typo'\]"),
    ],
)
def test_bad_solver_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SkewConvODE(3, 8, **kwargs)


def test_bad_block_arguments_are_named():
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        SkewConvODE(3, 8, 3)
    with pytest.raises(ValueError, match="gamma"):
        SkewConvODE(3, 8, gamma=-0.1)
    with pytest.raises(ValueError, match="stride-2 skew block takes kernel size 4 or 3, got 5"):
        SkewConvODE(3, 8, 2, kernel_size=5)
    with pytest.raises(ValueError, match="stride-1 skew block takes kernel size 3, got 4"):
        SkewConvODE(3, 8, 1, kernel_size=4)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        SkewConvODE(3, 8, activation="gelu")
    with pytest.raises(ValueError, match="expects \\(N, 3, H, W\\)"):
        SkewConvODE(3, 8)(torch.rand(2, 4, 8, 8))


def test_step_budget_error_names_the_block_solver():
    block = SkewConvODE(3, 8, tol=1e-9, max_num_steps=3)
    with pytest.raises(SolverError, match=r"dopri5 \(rtol=1e-09, atol=1e-09\)"):
        block(torch.rand(1, 3, 8, 8))


def test_solver_config_round_trips_as_a_dict():
    cfg = SolverConfig.create(method="bosh3", tol=0.01, step_control="per_sample")
    assert SolverConfig(**cfg.to_dict()) == cfg
    assert "bosh3" in cfg.describe()
