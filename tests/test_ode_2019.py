"""``step_semantics="torchdiffeq-2019"``: torchdiffeq's adaptive solvers before the 0.1.0 rewrite.

The peer is torchdiffeq itself at commit f9539b7dc1bb1f4956d18bbdd32c5cb64cf81fbc
(2020-06-30, the last change to torchdiffeq/_impl before the rewrite). It cannot
be a dependency, so its results are stored in tests/data/ode_2019_reference.json,
written by

    PYTHONPATH=src:. python tests/make_ode_2019_reference.py /tmp/tdq_f9539b7

with that commit's ``torchdiffeq`` package extracted into /tmp/tdq_f9539b7
(``git archive f9539b7 torchdiffeq``); see that script's docstring.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustode.ode import SolverConfig, StepRecord, odeint
from tests.fields import make_field

REFERENCE = json.loads((Path(__file__).parent / "data" / "ode_2019_reference.json").read_text())
CASES = REFERENCE["results"]
# agreement relative to the quantity's scale: outputs and step grids are in fact equal to
# the bit in both dtypes; gradients accumulate in another order (measured ≤ 4.6e-15 in
# float64, ≤ 2e-7 in float32)
TOL = {"float64": 1e-10, "float32": 1e-5}


def _as_tuple(v):
    return v if isinstance(v, tuple) else (v,)


def _loss(outputs) -> torch.Tensor:
    return sum((o * o.sin()).sum() for o in _as_tuple(outputs))


def _solve(case: dict, **kwargs):
    f, y0 = make_field(case["kind"], getattr(torch, case.get("dtype", "float64")))
    y0 = tuple(v.requires_grad_() for v in y0) if isinstance(y0, tuple) else y0.requires_grad_()
    record = StepRecord()
    out = odeint(
        f,
        y0,
        torch.tensor(case["t"], dtype=torch.float64),
        rtol=case["rtol"],
        atol=case["atol"],
        method=case["method"],
        options=case.get("options"),
        record=record,
        **kwargs,
    )
    grads = torch.autograd.grad(_loss(out), [*_as_tuple(y0), *f.parameters()])
    return out, record, grads, len(_as_tuple(y0))


def _close(ours: torch.Tensor, ref: list[float]) -> float:
    """max |Δ| / max(1, max |ref|)."""
    ref_t = torch.tensor(ref, dtype=torch.float64)
    scale = max(1.0, float(ref_t.abs().max()))
    return float((ours.detach().flatten() - ref_t).abs().max()) / scale


def _case_id(r: dict) -> str:
    c = r["case"]
    opts = ",".join(f"{k}={v}" for k, v in (c.get("options") or {}).items())
    return f"{c['kind']}-{c['method']}-rtol{c['rtol']}-t{c['t'][-1]:g}" + (
        f"-{opts}" if opts else ""
    )


@pytest.mark.parametrize("ref", CASES, ids=[_case_id(r) for r in CASES])
def test_2019_semantics_match_pre_rewrite_torchdiffeq(ref):
    """Outputs, every attempted step (t0, dt, accepted), NFE and the gradients with
    respect to y0 and the parameters equal the stored pre-rewrite torchdiffeq results."""
    out, record, grads, n_y = _solve(ref["case"], step_semantics="torchdiffeq-2019")
    tol = TOL[ref["case"].get("dtype", "float64")]
    assert record.nfe_forward == ref["nfe"]
    acc, rej = record.accepted_steps(), record.rejected_steps()
    assert len(acc) == len(ref["accepted"]) and len(rej) == len(ref["rejected"])
    # torchdiffeq logged its internal time s = -t on a decreasing grid; the record holds t
    sign = -1.0 if ref["case"]["t"][0] > ref["case"]["t"][-1] else 1.0
    for ours, theirs in ((acc, ref["accepted"]), (rej, ref["rejected"])):
        if theirs:
            theirs = [v for t0, dt in theirs for v in (sign * t0, dt)]
            assert _close(torch.tensor(ours, dtype=torch.float64), theirs) < 1e-12
    for o, r in zip(_as_tuple(out), ref["outputs"], strict=True):
        assert _close(o.double(), r) < tol
    for g, r in zip(grads[:n_y], ref["grad_y0"], strict=True):
        assert _close(g.double(), r) < tol
    for g, r in zip(grads[n_y:], ref["grad_params"], strict=True):
        assert _close(g.double(), r) < tol


def test_reference_covers_rejections_tuples_and_every_method():
    """The stored cases exercise what differs: rejected steps, tuple states with
    per-tensor tolerances, several output times, a decreasing grid, all three methods."""
    assert REFERENCE["torchdiffeq_commit"].startswith("f9539b7")
    assert {r["case"]["method"] for r in CASES} == {"dopri5", "bosh3", "adaptive_heun"}
    assert sum(len(r["rejected"]) > 0 for r in CASES) >= 2
    assert any(isinstance(r["case"]["rtol"], list) for r in CASES)
    assert any(len(r["case"]["t"]) > 2 for r in CASES)
    assert any(r["case"]["t"][0] > r["case"]["t"][-1] for r in CASES)
    assert any(r["case"].get("dtype") == "float32" for r in CASES)


def test_today_semantics_differ_on_the_same_cases():
    """The reference values are not what the default (torchdiffeq 0.2.5) semantics give:
    the comparison above can fail. On the conv tuple at tol 0.1 the input gradients differ."""
    ref = next(r for r in CASES if r["case"]["kind"] == "conv" and r["case"]["rtol"] == 0.1)
    _, _, grads, n_y = _solve(ref["case"])
    worst = max(_close(g, r) for g, r in zip(grads[:n_y], ref["grad_y0"], strict=True))
    assert worst > 1e-6


def test_step_sizes_carry_gradient_in_2019_mode_only():
    """d dt / d y0 ≠ 0 with the 2019 semantics (no no_grad in its step-size update);
    detaching the step sizes changes the input gradient, while the outputs stay equal."""
    f, y0 = make_field("conv", torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)

    def grad(**kw):
        y = tuple(v.clone().requires_grad_() for v in y0)
        out = odeint(f, y, t, rtol=0.1, atol=0.1, method="dopri5", **kw)
        return out, torch.autograd.grad(_loss(out), y)

    out_live, g_live = grad(step_semantics="torchdiffeq-2019")
    out_det, g_det = grad(step_semantics="torchdiffeq-2019", detach_step_size=True)
    for a, b in zip(out_live, out_det, strict=True):
        assert torch.equal(a, b)
    diff = max(float((a - b).abs().max()) for a, b in zip(g_live, g_det, strict=True))
    assert diff > 1e-6
    # today's semantics (later step sizes detached) give yet another input gradient
    _, g_today = grad()
    assert max(float((a - b).abs().max()) for a, b in zip(g_live, g_today, strict=True)) > 1e-6


def test_stage_times_are_functions_of_the_input_in_2019_mode():
    """The times the field sees in the last step, t0 + c·dt, depend on y0 through every
    earlier step size; with the step sizes detached they are constants."""
    f, y0 = make_field("mlp", torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)

    def last_time(**kw):
        seen = []

        def spy(s, y):
            seen.append(s)
            return f(s, y)

        y = y0.clone().requires_grad_()
        odeint(spy, y, t, rtol=1e-3, atol=1e-3, step_semantics="torchdiffeq-2019", **kw)
        return seen[-1], y

    s_live, y = last_time()
    (g,) = torch.autograd.grad(s_live, y)
    assert float(g.abs().max()) > 0
    s_det, _ = last_time(detach_step_size=True)
    assert not s_det.requires_grad and float(s_det) == float(s_live.detach())


def test_refusals_are_one_clear_line():
    f, y0 = make_field("mlp", torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown step_semantics"):
        odeint(f, y0, t, step_semantics="torchdiffeq-1999")
    with pytest.raises(ValueError, match="has no 'dopri8'"):
        odeint(f, y0, t, method="dopri8", step_semantics="torchdiffeq-2019")
    with pytest.raises(ValueError, match="per_sample"):
        odeint(f, y0, t, step_control="per_sample", step_semantics="torchdiffeq-2019")
    with pytest.raises(ValueError, match="min_step"):
        odeint(f, y0, t, options={"min_step": 0.1}, step_semantics="torchdiffeq-2019")
    with pytest.raises(ValueError, match="adjoint"):
        SolverConfig(adjoint=True, step_semantics="torchdiffeq-2019")
    with pytest.raises(ValueError, match="unknown step_semantics"):
        SolverConfig(step_semantics="2019")


def test_fixed_grid_methods_ignore_the_step_semantics():
    """The semantics concern the adaptive controller: a fixed grid is the same either way."""
    f, y0 = make_field("mlp", torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    kw = dict(method="rk4", options={"step_size": 0.25})
    assert torch.equal(
        odeint(f, y0, t, **kw), odeint(f, y0, t, step_semantics="torchdiffeq-2019", **kw)
    )


def test_solver_config_and_models_reach_every_block():
    """``create_model(..., step_semantics=...)`` puts the semantics in every ODE block's
    SolverConfig, and a block's solve then equals a direct 2019 odeint call."""
    from robustode.models import create_model
    from robustode.nn import ODEBlock

    model = create_model(
        "soblock", method="dopri5", tol=0.1, step_semantics="torchdiffeq-2019", width=4
    )
    blocks = [m for m in model.modules() if isinstance(m, ODEBlock)]
    assert blocks and all(b.solver.step_semantics == "torchdiffeq-2019" for b in blocks)
    cfg = SolverConfig(step_semantics="torchdiffeq-2019")
    f, y0 = make_field("conv", torch.float64)
    direct = odeint(
        f,
        y0,
        torch.tensor([0.0, 1.0], dtype=torch.float64),
        rtol=0.1,
        atol=0.1,
        step_semantics="torchdiffeq-2019",
    )
    via = cfg.solve(f, y0)
    for a, b in zip(direct, via, strict=True):
        assert torch.equal(a[-1], b)
    assert "torchdiffeq-2019" in cfg.describe()


def test_solver_substitutes_of_a_2019_block():
    """The solver-substitution attack's substitutes exist for a 2019-semantics block:
    detached keeps the 2019 steps with detached sizes, per-sample falls back to today's
    semantics (the only ones with per-sample control)."""
    from robustode.attacks.adaptive import substitute_solver

    deployed = SolverConfig(step_semantics="torchdiffeq-2019")
    detached = substitute_solver(deployed, "detached")
    assert detached.step_semantics == "torchdiffeq-2019" and detached.detach_step_size is True
    per_sample = substitute_solver(deployed, "per_sample")
    assert per_sample.step_control == "per_sample"
    assert per_sample.step_semantics == "torchdiffeq-0.2.5"
    assert substitute_solver(deployed, "fixed").method == "rk4"
    assert substitute_solver(deployed, "tight").rtol == deployed.rtol / 100
