"""Step callbacks, events and odeint_adjoint's semantics, with torchdiffeq 0.2.5 as the oracle."""

from __future__ import annotations

import pytest
import torch

from robustode.ode import StepRecord, odeint, odeint_adjoint, odeint_event

from .oracle import AdaptiveLoggedField, LoggedField, bit_equal, relative, run

torchdiffeq = pytest.importorskip("torchdiffeq")

F64 = torch.float64

# (dtype, decreasing time, tuple state): every pair of the three settings occurs once
PAIRWISE = [
    pytest.param(F64, False, False, id="f64-up-tensor"),
    pytest.param(F64, True, True, id="f64-down-tuple"),
    pytest.param(torch.float32, False, True, id="f32-up-tuple"),
    pytest.param(torch.float32, True, False, id="f32-down-tensor"),
]


def _event(t, y):
    """Two components (either may stop the solve); they cross for t of either sign."""
    y = y[0] if isinstance(y, tuple) else y
    return torch.stack([t * t - 0.14 + 0.01 * y.sum(), 0.25 - t * t + 0.02 * y[..., 0].mean()])


# ------------------------------------------------------------------ callbacks
@pytest.mark.parametrize("tuple_state", [False, True], ids=["tensor", "tuple"])
@pytest.mark.parametrize("decreasing", [False, True], ids=["up", "down"])
@pytest.mark.parametrize("method", ["dopri5", "rk4", "implicit_adams"])
def test_step_callbacks_are_called_as_torchdiffeq_calls_them(method, decreasing, tuple_state):
    """Same calls in the same order with the same (t0, dt): t0 in the caller's time."""
    seen = {}
    for name, solver in (("ref", torchdiffeq.odeint), ("ours", odeint)):
        f = (AdaptiveLoggedField if method == "dopri5" else LoggedField)(F64, tuple_state)
        layouts = []
        f.callback_step = lambda t0, y0, dt, f=f, layouts=layouts: (
            layouts.append(type(y0)),
            f.log.append(("step", t0.item(), dt.item())),
        )
        y0 = torch.ones(2, 3, dtype=F64)
        y0 = (y0, 2 * y0) if tuple_state else y0
        t = torch.tensor([0.5, 0.0] if decreasing else [0.0, 0.5], dtype=F64)
        options = None if method == "dopri5" else {"step_size": 0.1}
        solver(f, y0, t, method=method, options=options)
        seen[name] = (f.log, layouts)
    assert seen["ours"] == seen["ref"]
    assert seen["ours"][0]  # a real comparison: callbacks were called
    assert set(seen["ours"][1]) == {tuple if tuple_state else torch.Tensor}


class _StepAdjointLogged(LoggedField):
    def callback_step_adjoint(self, t0, y0, dt):
        self.log.append(("step_adjoint", t0.item(), dt.item(), tuple(v.shape for v in y0)))


class _AdjointLogged(AdaptiveLoggedField, _StepAdjointLogged):
    def callback_accept_step_adjoint(self, t0, y0, dt):
        self.log.append(("accept_adjoint", t0.item(), dt.item()))

    def callback_reject_step_adjoint(self, t0, y0, dt):
        self.log.append(("reject_adjoint", t0.item(), dt.item()))


@pytest.mark.parametrize("tuple_state", [False, True], ids=["tensor", "tuple"])
@pytest.mark.parametrize("decreasing", [False, True], ids=["up", "down"])
@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_adjoint_callbacks_are_called_as_torchdiffeq_calls_them(method, decreasing, tuple_state):
    """The backward solve's steps, and torchdiffeq's (t, y, a, θ) layout with y and a
    flat for a tuple state; forward callbacks too."""
    logs = []
    for solver in (torchdiffeq.odeint_adjoint, odeint_adjoint):
        f = (_AdjointLogged if method == "dopri5" else _StepAdjointLogged)(F64, tuple_state)
        a = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
        a.requires_grad_()
        y0 = (a, 2 * a.detach()) if tuple_state else a
        t = torch.tensor([1.0, 0.5, 0.0] if decreasing else [0.0, 0.5, 1.0], dtype=F64)
        options = None if method == "dopri5" else {"step_size": 0.1}
        out = solver(f, y0, t, method=method, options=options)
        (out[0] if tuple_state else out).sum().backward()
        logs.append(f.log)
    assert logs[1] == logs[0]
    assert any(entry[0] == "step_adjoint" for entry in logs[1])


# ------------------------------------------------------------------ events
EVENT_METHODS = {
    "dopri5": None,
    "dopri8": None,
    "bosh3": None,
    "rk4": {"step_size": 0.01},
    "euler": {"step_size": 0.01, "interp": "cubic"},
    "implicit_adams": {"step_size": 0.01, "interp": "cubic"},
}


@pytest.mark.parametrize(("dtype", "reverse", "tuple_state"), PAIRWISE)
@pytest.mark.parametrize("method", list(EVENT_METHODS))
def test_event_location_matches_torchdiffeq(method, dtype, reverse, tuple_state):
    """Event time and state bit-equal, same NFE and callbacks; the state's gradient
    (through the dense output, not through the event time) to rounding."""
    results = []
    for solver in (torchdiffeq.odeint, odeint):
        ev = {}

        def wrapped(f, y, t, solver=solver, ev=ev, **kw):
            ev["t"], sol = solver(f, y, t, event_fn=_event, **kw)
            return sol

        t = torch.tensor([0.0, -1.0 if reverse else 1.0], dtype=dtype)
        r = run(
            wrapped, dtype, t, tuple_state=tuple_state, method=method, options=EVENT_METHODS[method]
        )
        results.append((ev["t"], r))
    (t_ref, ref), (t_ours, ours) = results
    assert torch.equal(t_ours, t_ref)
    assert bit_equal(ours.outputs, ref.outputs)
    assert ours.nfe == ref.nfe and ours.log == ref.log
    bound = 1e-10 if dtype == F64 else 1e-4
    for a, b in zip(ours.grads, ref.grads, strict=True):
        assert relative(a, b) <= bound


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_odeint_event_time_gradient_matches_torchdiffeq(interface, reverse):
    """odeint_event links the event time to y0, θ and t0 (implicit function theorem)."""
    import robustode.ode as ours_module

    results = []
    for module, event in ((torchdiffeq, torchdiffeq.odeint_event), (ours_module, odeint_event)):
        f = AdaptiveLoggedField(F64)
        a = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
        a.requires_grad_()
        t0 = torch.tensor(0.1, dtype=F64, requires_grad=True)
        et, sol = event(
            f,
            a,
            t0,
            event_fn=_event,
            reverse_time=reverse,
            odeint_interface=getattr(module, interface),
        )
        grads = torch.autograd.grad(et + sol[-1].pow(2).sum(), [a, f.w, t0])
        results.append((et.detach(), sol.detach(), grads))
    (et_r, sol_r, g_r), (et_o, sol_o, g_o) = results
    assert torch.equal(et_o, et_r) and torch.equal(sol_o, sol_r)
    for a, b in zip(g_o, g_r, strict=True):
        assert relative(a, b) <= 1e-10
    assert g_o[2].abs() > 0.1  # the event time really depends on t0


def test_event_mode_needs_two_times_and_fixed_steps_need_a_step_size():
    y0 = torch.ones(2)
    with pytest.raises(ValueError, match="len\\(t\\) == 2"):
        odeint(lambda t, y: y, y0, torch.tensor([0.0, 1.0, 2.0]), event_fn=lambda t, y: t - 0.5)
    with pytest.raises(ValueError, match="needs options=\\{'step_size': h\\}"):
        odeint(
            lambda t, y: y,
            y0,
            torch.tensor([0.0, 1.0]),
            method="rk4",
            event_fn=lambda t, y: t - 0.5,
        )


def test_event_solve_fills_the_record():
    rec = StepRecord()
    t_event, sol = odeint(
        lambda t, y: -y,
        torch.ones(2, dtype=F64),
        torch.tensor([0.0, 1.0]).double(),
        event_fn=lambda t, y: y.sum() - 1.0,
        record=rec,
    )
    assert abs(float(t_event) - torch.log(torch.tensor(2.0)).item()) < 1e-6
    assert rec.num_accepted > 0 and sol.shape == (2, 2)


def test_adjoint_with_events_matches_torchdiffeq():
    """As torchdiffeq: the backward runs from the event time; the event time itself
    gets no gradient from odeint_adjoint (odeint_event adds it)."""
    grads = []
    for solver in (torchdiffeq.odeint_adjoint, odeint_adjoint):
        f = AdaptiveLoggedField(F64)
        a = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
        a.requires_grad_()
        et, sol = solver(f, a, torch.tensor([0.0, 1.0], dtype=F64), event_fn=_event)
        et.backward(retain_graph=True)  # runs, contributes nothing
        grads.append(torch.autograd.grad(sol[-1].pow(2).sum(), [a, f.w]))
    for x, y in zip(*grads, strict=True):
        assert relative(x, y) <= 1e-10


# ------------------------------------------------------------------ adjoint
ADJOINT_CASES = {
    "default": ("dopri5", None, {}),
    "seminorm": ("dopri5", None, {"adjoint_options": {"norm": "seminorm"}}),
    "norm_callable": (
        "dopri5",
        None,
        {"adjoint_options": {"norm": lambda s: max(x.abs().max() for x in s)}},
    ),
    "adjoint_method_tolerances": (
        "bosh3",
        None,
        {"adjoint_method": "dopri5", "adjoint_rtol": 1e-6, "adjoint_atol": 1e-8},
    ),
    "fixed_grid": ("rk4", {"step_size": 0.05}, {}),
    "adams_forward": (
        "implicit_adams",
        {"step_size": 0.05},
        {"adjoint_method": "dopri5", "adjoint_options": {}},
    ),
    "forward_norm": (
        "dopri5",
        {
            "norm": lambda y: (
                y.abs().max() if isinstance(y, torch.Tensor) else max(v.abs().max() for v in y)
            )
        },
        {},
    ),
}


@pytest.mark.parametrize(("dtype", "decreasing", "tuple_state"), PAIRWISE)
@pytest.mark.parametrize("case", list(ADJOINT_CASES))
def test_adjoint_matches_torchdiffeq(case, dtype, decreasing, tuple_state):
    """Outputs, backward NFE and gradients (y0, θ, t) all equal: the backward solve does
    torchdiffeq's arithmetic (its time term is one dot over the flattened state)."""
    method, options, kw = ADJOINT_CASES[case]
    values = (0.8, 0.3, -0.1) if decreasing else (0.0, 0.3, 0.8)
    results = []
    field = AdaptiveLoggedField if method == "dopri5" or method == "bosh3" else LoggedField
    for solver in (torchdiffeq.odeint_adjoint, odeint_adjoint):
        f = field(dtype, tuple_state)
        a = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        a = a.to(dtype).requires_grad_()
        y0 = (a, 2 * a.detach()) if tuple_state else a
        t = torch.tensor(values, dtype=dtype, requires_grad=True)
        out = solver(f, y0, t, method=method, options=options, **kw)
        outs = out if tuple_state else (out,)
        f.nfe = 0
        grads = torch.autograd.grad(sum((o * o.sin()).sum() for o in outs), [a, f.w, t])
        results.append((tuple(o.detach() for o in outs), f.nfe, grads))
    (out_r, nfe_r, g_r), (out_o, nfe_o, g_o) = results
    assert bit_equal(out_o, out_r)
    assert nfe_o == nfe_r
    assert bit_equal(g_o, g_r)


def test_seminorm_backward_steps_do_not_depend_on_the_tracked_parameters():
    """The seminorm leaves the parameter adjoints out of the error norm, so the
    backward solve takes the same steps whichever parameters are tracked; the
    default norm includes them (here b's adjoint grows large and adds steps)."""
    torch.manual_seed(2)
    w = torch.randn(3, 3, dtype=F64, requires_grad=True)
    b = (10 * torch.randn(3, dtype=F64)).requires_grad_()
    nfe = {}
    for norm in (None, "seminorm"):
        for params in ((w,), (w, b)):
            calls = [0]

            def f(t, y, calls=calls):
                calls[0] += 1
                return torch.tanh(y @ w) + b

            y0 = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
            kw = {} if norm is None else {"adjoint_options": {"norm": norm}}
            out = odeint_adjoint(
                f,
                y0.requires_grad_(),
                torch.tensor([0.0, 1.0], dtype=F64),
                rtol=1e-7,
                atol=1e-7,
                adjoint_params=params,
                **kw,
            )
            calls[0] = 0
            out.pow(2).sum().backward()
            nfe[norm, len(params)] = calls[0]
    assert nfe["seminorm", 1] == nfe["seminorm", 2]
    assert nfe[None, 2] > nfe[None, 1]


@pytest.mark.parametrize("tuple_state", [False, True], ids=["tensor", "tuple"])
@pytest.mark.parametrize("seminorm", [False, True])
def test_adjoint_norm_is_on_the_graph_and_read_at_backward_time(seminorm, tuple_state):
    """torchdiffeq's hook: ``out.grad_fn.adjoint_options["norm"]`` takes (τ, y, a, *θ)
    with y and a flat for a tuple state; replacing it changes the backward norm."""
    p = (
        torch.rand(7, dtype=F64, requires_grad=True),
        torch.rand((), dtype=F64, requires_grad=True),
    )
    y0 = (
        (torch.tensor(1.0, dtype=F64), torch.full((2, 2), 0.5, dtype=F64))
        if tuple_state
        else (torch.tensor([1.0, 2.0], dtype=F64))
    )
    kw = {"adjoint_options": {"norm": "seminorm"}} if seminorm else {}
    out = odeint_adjoint(
        lambda t, x: x if isinstance(x, torch.Tensor) else tuple(x),
        y0,
        torch.tensor([0.0, 1.0], dtype=F64),
        adjoint_params=p,
        **kw,
    )
    node = out[0].grad_fn.next_functions[0][0].next_functions[0][0] if tuple_state else out.grad_fn
    ours = node.adjoint_options["norm"]
    seen = []

    def spy(layout):
        seen.append(tuple(v.shape for v in layout))
        t, y, a, *params = layout
        expected = [t.abs(), y.pow(2).mean().sqrt(), a.pow(2).mean().sqrt()]
        if tuple_state:  # the per-tensor RMS of the flat (1 + 4) layout
            expected[1:] = [
                y[0].abs(),
                y[1:].pow(2).mean().sqrt(),
                a[0].abs(),
                a[1:].pow(2).mean().sqrt(),
            ]
        if not seminorm:
            expected += [params[0].pow(2).mean().sqrt(), params[1].abs()]
        value = ours(layout)
        assert abs(float(value) - float(max(expected))) <= 1e-12
        return value

    node.adjoint_options["norm"] = spy
    (out[0] if tuple_state else out).sum().backward()
    assert seen and seen[0][1] == ((5,) if tuple_state else (2,))


def test_adjoint_of_a_plain_function_needs_adjoint_params_as_in_torchdiffeq():
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    for solver in (torchdiffeq.odeint_adjoint, odeint_adjoint):
        with pytest.raises(ValueError, match="adjoint_params"):
            solver(lambda t, y: -y, y0, t)
    with pytest.raises(ValueError, match="adjoint_params"):
        odeint_adjoint(lambda t, y: -y, y0, t, backend="torchdiffeq")
    out = odeint_adjoint(lambda t, y: -y, y0, t, adjoint_params=())
    (g,) = torch.autograd.grad(out[-1].sum(), y0)
    assert relative(g, torch.full((2,), torch.exp(torch.tensor(-1.0)).item(), dtype=F64)) < 1e-6


def test_adjoint_method_other_than_method_with_options_needs_adjoint_options():
    f = AdaptiveLoggedField(F64)
    with pytest.raises(ValueError, match="adjoint_options"):
        odeint_adjoint(
            f,
            torch.ones(2, 3, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method="rk4",
            options={"step_size": 0.1},
            adjoint_method="dopri5",
        )


def test_adjoint_jump_t_on_a_decreasing_grid_helps_the_backward_solve():
    """Deliberately unlike torchdiffeq 0.2.5, whose backward solve of a decreasing grid
    gets jump_t mirrored (−0.5 instead of 0.5) and so never uses it: here the jump is
    where the caller put it, and the backward solve lands on it (fewer evaluations)."""

    class Jump:
        nfe = 0

        def __call__(self, t, x):
            self.nfe += 1
            return -0.5 * x if t < 0.5 else x**2

    nfe = {}
    for jump in (False, True):
        f = Jump()
        x0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
        options = {"jump_t": torch.tensor([0.5], dtype=F64)} if jump else None
        out = odeint_adjoint(
            f,
            x0,
            torch.tensor([1.0, 0.0], dtype=F64),
            rtol=1e-6,
            atol=1e-6,
            options=options,
            adjoint_params=(),
        )
        f.nfe = 0
        out.sum().backward()
        nfe[jump] = f.nfe
    assert nfe[True] < nfe[False] / 2


def test_reference_backend_forwards_the_callers_callbacks():
    native, reference = AdaptiveLoggedField(F64), AdaptiveLoggedField(F64)
    rec = StepRecord()
    y0, t = torch.ones(2, 3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    odeint(native, y0, t)
    odeint(reference, y0, t, backend="torchdiffeq", record=rec)
    assert native.log == reference.log and rec.num_accepted == sum(
        e[0] == "accept" for e in native.log
    )
