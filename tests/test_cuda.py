"""CUDA checks: run where a GPU is present, skipped (with the reason) elsewhere."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from robustode.models import create_model
from robustode.nn import SkewConvODE
from robustode.ode import StepRecord, odeint

from .fields import make_field

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _to_cuda(field, y0):
    field = field.cuda()
    y0 = tuple(v.cuda() for v in y0) if isinstance(y0, tuple) else y0.cuda()
    return field, y0


def test_cuda_matches_cpu_per_method():
    for method in ("dopri5", "bosh3", "adaptive_heun", "rk4", "euler"):
        f, y0 = make_field("conv", torch.float64)
        t = torch.tensor([0.0, 1.0], dtype=torch.float64)
        kw = dict(rtol=1e-3, atol=1e-3, method=method)
        cpu = odeint(f, y0, t, **kw)
        f, y0 = _to_cuda(f, y0)
        gpu = odeint(f, y0, t, **kw)
        for a, b in zip(cpu, gpu, strict=True):
            assert torch.allclose(a, b.cpu(), rtol=1e-8, atol=1e-10), method


def test_fixed_step_solve_never_synchronises():
    f, y0 = _to_cuda(*make_field("conv"))
    t = torch.tensor([0.0, 1.0])
    odeint(f, y0, t, method="rk4", options={"step_size": 0.1})  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        # only the grid is read, from t on the host
        odeint(f, y0, t, method="rk4", options={"step_size": 0.1})
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_adaptive_solve_synchronises_at_most_once_per_step():
    f, y0 = _to_cuda(*make_field("conv"))
    rec = StepRecord()
    t = torch.tensor([0.0, 1.0])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            odeint(f, y0, t, rtol=1e-3, atol=1e-3, record=rec)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= rec.num_steps + 2


def test_block_per_sample_on_cuda():
    block = SkewConvODE(3, 8, step_control="per_sample", tol=1e-2).cuda()
    x = torch.rand(4, 3, 8, 8, device="cuda")
    with torch.no_grad():
        full = block(x)
        alone = torch.cat([block(x[i : i + 1]) for i in range(4)])
    assert float((full - alone).abs().max() / alone.abs().max()) <= 1e-4


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("soblock", {"width": 8, "method": "rk4", "step_size": 0.5}),
        ("sonet", {"width": 8, "method": "rk4", "step_size": 0.5}),
        ("preact_resnet56", {"depth": 8}),
    ],
)
def test_models_on_cuda_match_cpu(name, options):
    cpu = create_model(name, seed=0, **options).eval().double()
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    xg = x.cuda().requires_grad_()
    out = gpu(xg)
    out.sum().backward()
    assert out.device.type == "cuda" and xg.grad is not None
    torch.testing.assert_close(out.cpu(), cpu(x), rtol=1e-9, atol=1e-9)


def test_every_attack_preset_runs_on_cuda_inside_the_threat_model():
    from robustode.attacks import create_attack, list_attacks

    model = create_model("resnet10", width=4, seed=0).cuda().eval()
    x = torch.rand(8, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (8,), device="cuda")
    small = {"steps": 3}
    for name in list_attacks():
        overrides = {
            "spsa": {"iterations": 2},
            "square": {"queries": 20},
            "autoattack": {},
            "fgsm": {},
            "cw-linf": {"steps": 3},
        }.get(name, small)
        attack = create_attack(name, **overrides)
        result = attack.run(model, x, y)
        assert result.x_adv.device.type == "cuda"
        assert attack.threat.contains(result.x_adv, x).all(), name
