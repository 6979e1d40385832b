"""torchdiffeq 0.2.5 as the oracle of every method and option: same steps, same bits.

Forward results (outputs, function evaluations, the step callbacks' sequence)
are compared for equality, not closeness, in float32 and float64 — float32 at
torchdiffeq's default tolerances (rtol 1e-7, atol 1e-9), where the error
estimate is rounding noise and only identical arithmetic takes the same
steps. Gradients go through a different (tuple-native) graph and agree to
rounding: ≤ 1e-10 relative in float64, ≤ 1e-4 in float32 (docs/ode-engine.md
gives the measured maxima).
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import pytest
import torch

from robustode.ode import ADAPTIVE_METHODS, METHODS, StepRecord, odeint
from robustode.ode.adams import bashforth, exact_weights, moulton
from robustode.ode.tableau import TABLEAUS

from .oracle import bit_equal, relative, run

torchdiffeq = pytest.importorskip("torchdiffeq")

GRAD_BOUND = {torch.float64: 1e-10, torch.float32: 1e-4}


def _assert_same(ours, ref, dtype):
    assert bit_equal(ours.outputs, ref.outputs)
    assert ours.nfe == ref.nfe
    assert ours.log == ref.log
    for a, b in zip(ours.grads, ref.grads, strict=True):
        assert relative(a, b) <= GRAD_BOUND[dtype]


# ------------------------------------------------------------------ coefficients
@pytest.mark.parametrize("method", ["dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun"])
def test_adaptive_tableaus_are_torchdiffeqs(method):
    from torchdiffeq._impl.odeint import SOLVERS

    solver = SOLVERS[method]
    ref, ours = solver.tableau, TABLEAUS[method]
    assert list(ours.c) == ref.alpha.tolist()
    for row, beta in zip(ours.a, ref.beta, strict=True):
        assert list(row) == beta.tolist()
    assert list(ours.b) == ref.c_sol.tolist()
    assert list(ours.b_error) == ref.c_error.tolist()
    assert list(ours.b_mid) == solver.mid.tolist()
    assert ours.order == solver.order


def test_adams_coefficients_are_torchdiffeqs():
    from torchdiffeq._impl.fixed_adams import _BASHFORTH_DIVISOR, _MOULTON_DIVISOR

    for order in range(2, 13):  # the orders torchdiffeq's max_order (≤ 12) can reach
        assert list(bashforth(order)) == _BASHFORTH_DIVISOR[order].tolist()
        assert list(moulton(order)) == _MOULTON_DIVISOR[order].tolist()


def test_adams_coefficients_integrate_polynomials_exactly():
    """Independent of torchdiffeq: the order-k weights integrate t^p, p < k, exactly
    over one step (rational arithmetic), and the floats are the nearest float64."""
    for k in range(1, 13):
        ab, am = exact_weights(k, 0), exact_weights(k, 1)
        for p in range(k):
            assert sum(b * (-j) ** p for j, b in enumerate(ab)) == Fraction(1, p + 1)
            assert sum(b * (1 - j) ** p for j, b in enumerate(am)) == Fraction(1, p + 1)
        assert bashforth(k) == tuple(float(w) for w in ab)
        assert moulton(k) == tuple(float(w) for w in am)


# ------------------------------------------------------------------ every method
def _options(method):
    return None if method in ADAPTIVE_METHODS else {"step_size": 0.05}


@pytest.mark.parametrize("tuple_state", [False, True], ids=["tensor", "tuple"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_takes_torchdiffeqs_steps_at_default_tolerances(method, dtype, tuple_state):
    """Outputs bit-equal, equal NFE, equal callback sequence; gradients w.r.t. y0,
    the parameters and the output times to rounding."""
    t = torch.tensor([0.0, 0.3, 0.6], dtype=dtype, requires_grad=True)
    kw = dict(method=method, options=_options(method), tuple_state=tuple_state)
    if method == "adaptive_heun":
        kw.update(rtol=1e-5, atol=1e-6)  # second order at 1e-7 is ~2000 NFE: slow, not harder
    ref = run(torchdiffeq.odeint, dtype, t, **kw)
    ours = run(odeint, dtype, t, **kw)
    _assert_same(ours, ref, dtype)


# ------------------------------------------------------------------ options
def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


OPTION_CASES = {
    "first_step": ("dopri5", {"first_step": 0.01}, {}),
    "safety_ifactor_dfactor": ("dopri5", {"safety": 0.8, "ifactor": 5.0, "dfactor": 0.3}, {}),
    "min_max_step": ("dopri5", {"min_step": 0.05, "max_step": 0.1}, {}),
    "step_t": ("dopri5", {"step_t": _t(0.1, 0.25, 0.5)}, {}),
    "jump_t": ("dopri8", {"jump_t": _t(0.1, 0.25, 0.5)}, {}),
    "step_t_and_jump_t": ("bosh3", {"step_t": _t(0.2), "jump_t": _t(0.45)}, {}),
    "time_dtype_float32": ("dopri5", {"dtype": torch.float32}, {}),
    "norm_callable": (
        "dopri5",
        {
            "norm": lambda y: (
                torch.stack([v.abs().max() for v in y]).max()
                if isinstance(y, tuple)
                else y.abs().max()
            )
        },
        {},
    ),
    "per_tensor_tolerances": ("dopri5", None, {"rtol": (1e-6, 1e-4), "atol": (1e-8, 1e-7)}),
    "grid_constructor": (
        "rk4",
        {"grid_constructor": lambda f, y0, t: torch.linspace(t[0], t[-1], 7, dtype=t.dtype)},
        {},
    ),
    "interp_cubic": ("heun3", {"step_size": 0.07, "interp": "cubic"}, {}),
    "perturb": ("heun2", {"step_size": 0.07, "perturb": True}, {}),
    "perturb_cubic": ("midpoint", {"step_size": 0.07, "perturb": True, "interp": "cubic"}, {}),
    # max_iters=2 leaves the corrector unconverged: both warn and drop a derivative
    "adams_max_iters": (
        "implicit_adams",
        {"step_size": 0.03, "perturb": True, "max_iters": 2},
        {"rtol": 1e-9, "atol": 1e-10},
    ),
    "adams_max_order": ("explicit_adams", {"step_size": 0.03, "max_order": 6}, {}),
    "adams_cubic": (
        "fixed_adams",
        {"step_size": 0.03, "max_order": 5, "interp": "cubic"},
        {"rtol": 1e-3, "atol": 1e-4},
    ),
}


@pytest.mark.filterwarnings("ignore:Functional iteration did not converge")
@pytest.mark.parametrize("decreasing", [False, True], ids=["up", "down"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_every_option_matches_torchdiffeq(case, dtype, decreasing):
    method, options, tol = OPTION_CASES[case]
    values = (0.8, 0.3, -0.1) if decreasing else (0.0, 0.3, 0.8)
    if options and decreasing:  # prescribed times follow the grid into negative time
        options = {k: (-v + 0.7 if k in ("step_t", "jump_t") else v) for k, v in options.items()}
    t = torch.tensor(values, dtype=dtype, requires_grad=True)
    tuple_state = "rtol" in tol and isinstance(tol["rtol"], tuple)
    kw = dict(method=method, tuple_state=tuple_state, **tol)
    ref = run(torchdiffeq.odeint, dtype, t, options=dict(options or {}) or None, **kw)
    ours = run(odeint, dtype, t, options=dict(options or {}) or None, **kw)
    _assert_same(ours, ref, dtype)


def test_per_element_tolerance_tensor_matches_torchdiffeq():
    t = torch.tensor([0.0, 0.2], dtype=torch.float32)
    kw = dict(method="dopri5", rtol=torch.tensor([1e-6, 1e-5, 1e-4]), atol=1e-7)
    _assert_same(
        run(odeint, torch.float32, t, **kw),
        run(torchdiffeq.odeint, torch.float32, t, **kw),
        torch.float32,
    )


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64], ids=["c128", "c64"])
@pytest.mark.parametrize("method", ["dopri5", "dopri8", "rk4", "implicit_adams"])
def test_complex_states_match_torchdiffeq(method, dtype):
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    kw = dict(method=method, options=_options(method), shape=(2, 3))
    ours, ref = run(odeint, dtype, t, **kw), run(torchdiffeq.odeint, dtype, t, **kw)
    _assert_same(ours, ref, torch.float64 if dtype == torch.complex128 else torch.float32)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "euler", "explicit_adams"])
def test_zero_dim_states(method):
    """float64: bit-equal. float32: torchdiffeq multiplies the 0-dim state by 0-dim
    float64 tensors (tolerances, first step, fixed-grid dt), which PyTorch promotes
    to float64; robustode keeps float32 arithmetic — within float32 resolution."""
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    kw = dict(method=method, options=_options(method), shape=())
    _assert_same(
        run(odeint, torch.float64, t, **kw),
        run(torchdiffeq.odeint, torch.float64, t, **kw),
        torch.float64,
    )
    ours, ref = run(odeint, torch.float32, t, **kw), run(torchdiffeq.odeint, torch.float32, t, **kw)
    assert ours.outputs[0].dtype == ref.outputs[0].dtype == torch.float32
    assert relative(ours.outputs[0], ref.outputs[0]) <= 1e-5


def test_no_integration_returns_y0():
    y0 = torch.randn(3, dtype=torch.float64)
    for method in METHODS:
        out = odeint(lambda t, y: -y, y0, torch.tensor([0.5], dtype=torch.float64), method=method)
        assert out.shape == (1, 3) and torch.equal(out[0], y0)


# ------------------------------------------------------------------ warnings, refusals
def test_an_option_the_method_does_not_take_warns_and_is_ignored_as_in_torchdiffeq():
    t = torch.tensor([0.0, 0.5], dtype=torch.float64)
    plain = run(odeint, torch.float64, t, method="dopri5")
    with pytest.warns(UserWarning, match=r"dopri5: unexpected option\(s\) \['step_size'\]"):
        given = run(odeint, torch.float64, t, method="dopri5", options={"step_size": 0.1})
    with pytest.warns(UserWarning):  # torchdiffeq warns as well
        torchdiffeq.odeint(lambda t, y: -y, torch.ones(1), t.float(), options={"step_size": 0.1})
    assert bit_equal(given.outputs, plain.outputs)


def test_max_order_below_four_warns_like_torchdiffeq():
    with pytest.warns(UserWarning, match="reduces to rk4"):
        odeint(
            lambda t, y: -y,
            torch.ones(2),
            torch.tensor([0.0, 0.2]),
            method="explicit_adams",
            options={"step_size": 0.1, "max_order": 3},
        )


def test_scipy_solver_runs_only_through_the_torchdiffeq_backend():
    y0 = torch.ones(2, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="runs only with backend='torchdiffeq'"):
        odeint(lambda t, y: -y, y0, t, method="scipy_solver")
    pytest.importorskip("scipy")
    out = odeint(lambda t, y: -y, y0, t, method="scipy_solver", backend="torchdiffeq")
    assert relative(out[-1], y0 * torch.exp(torch.tensor(-1.0, dtype=torch.float64))) < 1e-5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"options": {"norm": lambda y: y.abs().max()}}, r"options\['norm'\] cannot be combined"),
        ({"event_fn": lambda t, y: t - 0.5}, "event_fn cannot be combined"),
        ({"method": "implicit_adams", "options": {"step_size": 0.1}}, "convergence test spans"),
    ],
)
def test_per_sample_refuses_batch_wide_features_with_one_line(kwargs, message):
    y0 = torch.ones(3, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        odeint(lambda t, y: -y, y0, t, step_control="per_sample", **kwargs)


def test_per_sample_refuses_step_callbacks():
    from .oracle import AdaptiveLoggedField

    f = AdaptiveLoggedField(torch.float64)
    with pytest.raises(ValueError, match="step callbacks"):
        odeint(
            f,
            torch.ones(4, 3, dtype=torch.float64),
            torch.tensor([0.0, 1.0]).double(),
            step_control="per_sample",
        )


# ------------------------------------------------------------------ robustode's extras compose
@pytest.mark.parametrize(
    "options",
    [
        {"step_t": _t(0.15, 0.4)},
        {"jump_t": _t(0.15, 0.4)},
        {"step_t": _t(0.2), "jump_t": _t(0.45)},
        {"dtype": torch.float32},
    ],
    ids=["step_t", "jump_t", "both", "dtype"],
)
def test_per_sample_with_prescribed_times_equals_each_sample_alone(options):
    from .fields import make_field

    f, y0 = make_field("mlp", torch.float64, seed=3)
    y0 = y0 * torch.tensor([0.1, 1.0, 5.0, 20.0], dtype=torch.float64).view(-1, 1)
    t = torch.tensor([0.0, 0.3, 0.7], dtype=torch.float64)
    rec = StepRecord()
    kw = dict(rtol=1e-5, atol=1e-5, options=options)
    batch = odeint(f, y0, t, step_control="per_sample", record=rec, **kw)
    for i in range(len(y0)):
        alone_rec = StepRecord()
        alone = odeint(f, y0[i : i + 1], t, record=alone_rec, **kw)
        assert relative(batch[:, i : i + 1], alone) <= 1e-12
        assert rec.num_accepted[i] == alone_rec.num_accepted
        assert rec.num_rejected[i] == alone_rec.num_rejected


@pytest.mark.parametrize("method", ["rk4", "explicit_adams", "midpoint"])
def test_record_of_fixed_grid_methods_is_the_shared_grid(method):
    rec = StepRecord()
    odeint(
        lambda t, y: -y,
        torch.ones(3, 2),
        torch.tensor([0.0, 1.0]),
        method=method,
        options={"step_size": 0.25},
        record=rec,
        step_control="per_sample",
    )
    assert rec.accepted_steps() == [(0.0, 0.25), (0.25, 0.25), (0.5, 0.25), (0.75, 0.25)]


def test_time_dtype_option_rounds_time_like_torchdiffeq():
    rec32, rec64 = StepRecord(), StepRecord()
    f = lambda t, y: torch.cos(t) * y  # noqa: E731
    y0 = torch.ones(2, dtype=torch.float32)
    t = torch.tensor([0.0, 1.0])
    odeint(f, y0, t, rtol=1e-5, atol=1e-5, options={"dtype": torch.float32}, record=rec32)
    odeint(f, y0, t, rtol=1e-5, atol=1e-5, record=rec64)
    starts = [t0 for t0, _ in rec32.accepted_steps()]
    assert all(float(torch.tensor(s, dtype=torch.float32)) == s for s in starts)
    assert starts != [t0 for t0, _ in rec64.accepted_steps()]


def test_a_callback_the_method_does_not_call_warns_as_in_torchdiffeq():
    from .oracle import AdaptiveLoggedField

    t = torch.tensor([0.0, 0.2])
    for solver in (odeint, torchdiffeq.odeint):
        with pytest.warns(UserWarning, match="does not support callbacks"):
            solver(AdaptiveLoggedField(torch.float32), torch.ones(2, 3), t, method="rk4")


def test_warnings_from_odeint_are_not_raised_for_supported_calls():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in METHODS:
            odeint(
                lambda t, y: -y,
                torch.ones(2),
                torch.tensor([0.0, 0.5]),
                method=method,
                options=_options(method),
            )


# ------------------------------------------------------------------ odeint_dense
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_odeint_dense_matches_torchdiffeq_and_odeint(dtype):
    from robustode.ode import odeint_dense

    from .oracle import AdaptiveLoggedField, initial_state

    results = []
    for dense in (torchdiffeq.odeint_dense, odeint_dense):
        f = AdaptiveLoggedField(dtype)
        leaf, y0 = initial_state(dtype, False)
        fn = dense(
            f,
            y0,
            torch.tensor(0.0, dtype=dtype),
            torch.tensor(1.0, dtype=dtype),
            rtol=1e-5,
            atol=1e-6,
        )
        # torchdiffeq's takes one time per call
        values = [fn(torch.tensor(v, dtype=torch.float64)) for v in (0.0, 0.13, 0.5, 0.77)]
        grads = torch.autograd.grad(sum(v.sum() for v in values), [leaf, f.w])
        results.append((tuple(v.detach() for v in values), f.nfe, f.log, grads))
    (v_r, n_r, l_r, g_r), (v_o, n_o, l_o, g_o) = results
    assert bit_equal(v_o, v_r) and n_o == n_r and l_o == l_r
    for a, b in zip(g_o, g_r, strict=True):
        assert relative(a, b) <= GRAD_BOUND[dtype]
    # ours also takes a vector of times (t1 included) and equals odeint there
    f = AdaptiveLoggedField(dtype)
    _, y0 = initial_state(dtype, False)
    ts = torch.linspace(0, 1, 5, dtype=dtype)
    fn = odeint_dense(f, y0.detach(), ts[0], ts[-1])
    assert torch.equal(fn(ts), odeint(f, y0.detach(), ts))


def test_odeint_dense_refuses_what_it_cannot_do():
    from robustode.ode import odeint_dense

    y0 = torch.ones(2)
    with pytest.raises(ValueError, match="needs an adaptive method"):
        odeint_dense(lambda t, y: -y, y0, torch.tensor(0.0), torch.tensor(1.0), method="rk4")
    with pytest.raises(ValueError, match="t1 > t0"):
        odeint_dense(lambda t, y: -y, y0, torch.tensor(1.0), torch.tensor(0.0))
    fn = odeint_dense(lambda t, y: -y, y0, torch.tensor(0.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="t_eval must lie in"):
        fn(torch.tensor(-0.5))
