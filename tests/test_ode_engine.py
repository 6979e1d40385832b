"""Properties of the native engine that torchdiffeq does not have or check."""

from __future__ import annotations

import math

import pytest
import torch

from robustode.ode import ADAPTIVE_METHODS, METHODS, SolverError, StepRecord, odeint, odeint_adjoint

from .fields import MLPField, make_field


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# ----------------------------------------------------------------- per-sample mode
@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_per_sample_output_equals_solving_each_sample_alone(method, kind):
    # dopri8's error estimate at tol 1e-2 (~1e-8) is below float32's resolution, so
    # the last-bit difference of a field evaluated on 4 samples or on 1 (BLAS
    # blocking) decides its step sizes: compare it in float64.
    dtype = torch.float64 if method == "dopri8" else torch.float32
    f, y0 = make_field(kind, dtype, seed=3)
    t = torch.tensor([0.0, 0.6, 1.0], dtype=dtype)
    tol = 1e-2
    rec = StepRecord()
    batch = odeint(
        f, y0, t, rtol=tol, atol=tol, method=method, step_control="per_sample", record=rec
    )
    batch = batch if isinstance(batch, tuple) else (batch,)
    n = batch[0].shape[1]
    for i in range(n):
        yi = tuple(v[i : i + 1] for v in y0) if isinstance(y0, tuple) else y0[i : i + 1]
        alone = odeint(f, yi, t, rtol=tol, atol=tol, method=method)
        alone = alone if isinstance(alone, tuple) else (alone,)
        for a, b in zip(batch, alone, strict=True):
            assert _rel(a[:, i : i + 1], b) <= 1e-5
    assert len(rec.accepted_steps()) == n


def test_per_sample_record_holds_each_samples_own_grid():
    f, y0 = make_field("mlp", torch.float64, seed=6)
    y0 = y0 * torch.tensor([0.1, 1.0, 5.0, 20.0], dtype=torch.float64).view(-1, 1)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    rec = StepRecord()
    odeint(f, y0, t, rtol=1e-4, atol=1e-4, step_control="per_sample", record=rec)
    grids = rec.accepted_steps()
    for i in range(y0.shape[0]):
        alone = StepRecord()
        odeint(f, y0[i : i + 1], t, rtol=1e-4, atol=1e-4, record=alone)
        ours = [v for step in grids[i] for v in step]
        ref = [v for step in alone.accepted_steps() for v in step]
        assert ours == pytest.approx(ref, abs=1e-9)
    distinct = {tuple(round(v, 12) for step in g for v in step) for g in grids}
    assert len(distinct) == len(grids)  # the samples really took different grids


def test_batch_mode_couples_samples_and_per_sample_mode_does_not():
    """The property docs/references.md reports for torchdiffeq: batch-mates change outputs."""
    f, y0 = make_field("mlp", seed=1)
    t = torch.tensor([0.0, 3.0])
    other = torch.randn(3, 5) * 20
    mixed = torch.cat([y0[:1], other])
    kw = dict(rtol=0.1, atol=0.1, method="dopri5")
    alone = odeint(f, y0[:1], t, **kw)[-1]
    coupled = odeint(f, mixed, t, **kw)[-1, :1]
    isolated = odeint(f, mixed, t, step_control="per_sample", **kw)[-1, :1]
    assert _rel(coupled, alone) > 1e-5
    assert _rel(isolated, alone) <= 1e-6


def test_per_sample_gradients_match_solving_alone():
    f, y0 = make_field("mlp", torch.float64, seed=2)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y0.requires_grad_()
    out = odeint(f, y0, t, rtol=1e-3, atol=1e-3, step_control="per_sample")[-1]
    (g,) = torch.autograd.grad(out.pow(2).sum(), y0)
    for i in range(y0.shape[0]):
        yi = y0.detach()[i : i + 1].requires_grad_()
        oi = odeint(f, yi, t, rtol=1e-3, atol=1e-3)[-1]
        (gi,) = torch.autograd.grad(oi.pow(2).sum(), yi)
        assert _rel(g[i : i + 1], gi) <= 1e-6


# ----------------------------------------------------------------- gradients
@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_float64(method):
    """Analytic gradients equal finite differences through every solver.

    With ``detach_step_size=False`` the step sizes are part of the graph, so
    the gradient is the exact derivative of the computed solution. (The default,
    torchdiffeq's semantics, detaches later step sizes on purpose, so finite
    differences — which see the step sizes move — cannot be its oracle;
    torchdiffeq is, in test_ode_vs_torchdiffeq.py.)
    """
    torch.manual_seed(0)
    f = MLPField(dim=3, hidden=6).double()
    y0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.7], dtype=torch.float64)
    kw = dict(rtol=1e-3, atol=1e-3, method=method, detach_step_size=False)
    if method in ("euler", "rk4"):
        kw = dict(method=method, options={"step_size": 0.1})
    assert torch.autograd.gradcheck(lambda y: odeint(f, y, t, **kw)[-1], (y0,))


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "rk4"])
def test_adjoint_gradients_agree_with_backprop(method):
    f, y0 = make_field("conv", torch.float64, seed=4)
    y0 = tuple(v.requires_grad_() for v in y0)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    kw = dict(rtol=1e-8, atol=1e-8, method=method)
    if method == "rk4":
        kw = dict(method=method, options={"step_size": 0.05})
    wrt = [*y0, *f.parameters()]
    rec = StepRecord()
    out_bp = odeint(f, y0, t, **kw)
    out_adj = odeint_adjoint(f, y0, t, record=rec, **kw)
    for a, b in zip(out_adj, out_bp, strict=True):
        assert _rel(a, b) <= 1e-10
    loss = lambda out: sum((o[1:] ** 2).sum() for o in out)  # noqa: E731
    g_bp = torch.autograd.grad(loss(out_bp), wrt)
    g_adj = torch.autograd.grad(loss(out_adj), wrt)
    for a, b in zip(g_adj, g_bp, strict=True):
        assert _rel(a, b) <= 1e-4
    assert rec.nfe_backward > 0


def test_adjoint_accepts_a_derivative_that_does_not_depend_on_the_state():
    w = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(3, 2, dtype=torch.float64)

    def f(t, s):
        return torch.tanh(s[0] @ w), torch.zeros_like(s[1])

    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    kw = dict(rtol=1e-8, atol=1e-8, adjoint_params=(w,))
    g_adj = torch.autograd.grad(odeint_adjoint(f, (x0, c0), t, **kw)[0][-1].sum(), (w, x0))
    g_bp = torch.autograd.grad(odeint(f, (x0, c0), t, rtol=1e-8, atol=1e-8)[0][-1].sum(), (w, x0))
    for a, b in zip(g_adj, g_bp, strict=True):
        assert _rel(a, b) <= 1e-5


def test_first_step_is_differentiable_and_can_be_detached():
    f, y0 = make_field("mlp", torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y0.requires_grad_()
    grads = {}
    for mode in (None, True, False):
        out = odeint(f, y0, t, rtol=0.1, atol=0.1, detach_step_size=mode)[-1]
        grads[mode] = torch.autograd.grad(out.sum(), y0)[0]
    # the three semantics give three different (valid) gradients at loose tolerance
    assert _rel(grads[None], grads[True]) > 1e-8
    assert _rel(grads[False], grads[None]) > 1e-8


# ----------------------------------------------------------------- records & NFE
def test_record_counts_forward_and_backward_evaluations():
    f, y0 = make_field("mlp")
    y0.requires_grad_()
    rec = StepRecord()
    out = odeint(f, y0, torch.tensor([0.0, 1.0]), rtol=1e-3, atol=1e-3, record=rec)
    n_acc, n_rej = rec.num_accepted, rec.num_rejected
    # dopri5: f(t0) + one probe for the first step + 6 per attempted step
    assert rec.nfe_forward == 2 + 6 * (n_acc + n_rej)
    out[-1].sum().backward()
    assert rec.nfe_backward == rec.nfe_forward
    assert rec.to_dict()["nfe_backward"] == rec.nfe_backward


def _count_host_reads(monkeypatch):
    counter = {"n": 0}
    for name in ("__float__", "__bool__", "item", "tolist", "__int__"):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=original, **k):
            counter["n"] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return counter


@pytest.mark.parametrize("step_control", ["batch", "per_sample"])
def test_adaptive_step_reads_the_device_at_most_once(monkeypatch, step_control):
    f, y0 = make_field("conv")
    rec = StepRecord()
    t = torch.tensor([0.0, 20.0])
    counter = _count_host_reads(monkeypatch)
    odeint(f, y0, t, rtol=1e-6, atol=1e-6, step_control=step_control, record=rec)
    steps = rec.num_steps
    monkeypatch.undo()
    assert steps >= 20  # enough steps that two reads per step would break the bound
    # per solve: validating and reading t, the first step, one per output time
    assert counter["n"] <= steps + 7


def test_fixed_step_solve_reads_the_device_a_constant_number_of_times(monkeypatch):
    f, y0 = make_field("conv")
    counter = _count_host_reads(monkeypatch)
    odeint(f, y0, torch.tensor([0.0, 1.0]), method="rk4", options={"step_size": 0.01})
    monkeypatch.undo()
    assert counter["n"] <= 8  # validating and reading t; none in the 100-step loop


# ----------------------------------------------------------------- failures
def test_max_num_steps_raises_a_clear_error():
    f, y0 = make_field("mlp")
    with pytest.raises(SolverError, match=r"dopri5 \(rtol=1e-09, atol=1e-09\).*max_num_steps=5"):
        odeint(f, y0, torch.tensor([0.0, 10.0]), rtol=1e-9, atol=1e-9, options={"max_num_steps": 5})


@pytest.mark.parametrize("step_control", ["batch", "per_sample"])
def test_failure_on_a_decreasing_grid_speaks_in_the_callers_time(step_control):
    f, y0 = make_field("mlp")
    rec = StepRecord()
    with pytest.raises(SolverError, match=r"on the way to t=-5 .* at t=-0\.\d"):
        odeint(
            f,
            y0,
            torch.tensor([0.0, -5.0]),
            rtol=1e-9,
            atol=1e-9,
            options={"max_num_steps": 3},
            step_control=step_control,
            record=rec,
        )
    steps = rec.accepted_steps()
    if step_control == "per_sample":
        steps = [step for sample in steps for step in sample]
    starts = [t0 for t0, _ in steps]
    assert starts and all(t0 <= 0 for t0 in starts) and min(starts) < 0


def test_per_sample_mode_takes_one_scalar_per_sample():
    y0 = torch.tensor([1.0, 2.0, -0.5, 3.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    out = odeint(lambda t, y: -y, y0, t, rtol=1e-8, atol=1e-8, step_control="per_sample")
    assert torch.allclose(out[-1], y0 * math.exp(-1.0), rtol=1e-6)
    for i in range(len(y0)):
        alone = odeint(lambda t, y: -y, y0[i : i + 1], t, rtol=1e-8, atol=1e-8)
        assert torch.allclose(out[-1, i], alone[-1, 0], rtol=1e-6)


def test_non_finite_state_raises_instead_of_hanging():
    def blowup(t, y):
        return y * float("nan")

    with pytest.raises(SolverError, match="non-finite"):
        odeint(blowup, torch.ones(2, 2), torch.tensor([0.0, 1.0]))


def test_stiff_blowup_underflows_with_a_named_error():
    def finite_time_blowup(t, y):
        return y**2

    with pytest.raises(SolverError, match="dopri5"):
        odeint(
            finite_time_blowup,
            torch.ones(1, dtype=torch.float64),
            torch.tensor([0.0, 2.0], dtype=torch.float64),
            rtol=1e-6,
            atol=1e-6,
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "rk45"}, "unknown ODE method 'rk45'; choose one of: dopri5, dopri8"),
        ({"method": "scipy_solver"}, "runs only with backend='torchdiffeq'"),
        ({"step_control": "sample"}, "unknown step_control"),
        ({"backend": "scipy"}, "unknown backend"),
        ({"options": {"interp": "quadratic"}, "method": "rk4"}, "unknown interpolation method"),
        (
            {"options": {"step_size": 0.1, "grid_constructor": lambda f, y, t: t}, "method": "rk4"},
            "mutually exclusive",
        ),
        ({"options": {"max_order": 13}, "method": "implicit_adams"}, "max_order must be at most"),
        ({"method": "euler", "options": {"step_size": 0}}, "step_size must be a positive"),
        ({"rtol": -1.0}, "rtol must be finite and ≥ 0"),
        ({"rtol": 0.0, "atol": 0.0}, "cannot both be 0"),
        ({"options": {"max_num_steps": 0}}, "max_num_steps must be ≥ 1"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    f, y0 = make_field("mlp")
    with pytest.raises(ValueError, match=message):
        odeint(f, y0, torch.tensor([0.0, 1.0]), **kwargs)


def test_bad_time_grid_is_named():
    f, y0 = make_field("mlp")
    with pytest.raises(ValueError, match="finite"):
        odeint(f, y0, torch.tensor([0.0, float("inf")]), method="euler")
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        odeint(f, y0, torch.tensor([0.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match="1-D floating-point"):
        odeint(f, y0, torch.tensor([0, 1]))


def test_linear_ode_matches_closed_form():
    """An independent check of accuracy: y' = A y has y(t) = exp(tA) y0."""
    torch.manual_seed(5)
    a = torch.randn(4, 4, dtype=torch.float64) * 0.5
    y0 = torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    exact = y0 @ torch.linalg.matrix_exp(2.0 * a).T
    for method in METHODS:
        kw = (
            dict(rtol=1e-9, atol=1e-9)
            if method in ADAPTIVE_METHODS
            else {"options": {"step_size": 1e-3}}
        )
        out = odeint(lambda t, y: y @ a.T, y0, t, method=method, **kw)[-1]
        bound = 1e-2 if method == "euler" else 1e-5
        assert _rel(out, exact) <= bound, method
    assert math.isfinite(float(exact.sum()))
