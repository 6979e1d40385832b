"""Write tests/data/ode_2019_reference.json: what torchdiffeq's pre-rewrite solvers compute.

The values pin ``step_semantics="torchdiffeq-2019"`` (tests/test_ode_2019.py) to
torchdiffeq as it stood at commit f9539b7dc1bb1f4956d18bbdd32c5cb64cf81fbc
(2020-06-30, the last change to torchdiffeq/_impl before the 0.1.0 rewrite).
That code cannot be a dependency, so it is run once, outside the repository:

    git --git-dir=<torchdiffeq mirror> archive f9539b7 torchdiffeq | tar -x -C /tmp/tdq_f9539b7
    PYTHONPATH=src:. python tests/make_ode_2019_reference.py /tmp/tdq_f9539b7

(it ran unmodified on torch 2.13, one thread; float64 cases, and float32 ones). For each case: the
outputs at every time, the accepted and rejected (t0, dt) of every attempted
step (logged by wrapping the solver's step method), the number of function
evaluations, and the gradients of Σ y·sin(y) over all outputs with respect to
y0 and the field's parameters.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import torch

from tests.fields import make_field

CASES = [
    {"kind": "mlp", "method": "dopri5", "t": [0.0, 1.0], "rtol": 0.1, "atol": 0.1},
    {"kind": "mlp", "method": "dopri5", "t": [0.0, 1.0], "rtol": 1e-4, "atol": 1e-4},
    {"kind": "mlp", "method": "dopri5", "t": [0.0, 0.3, 1.0], "rtol": 1e-3, "atol": 1e-3},
    {"kind": "mlp", "method": "dopri5", "t": [1.0, 0.0], "rtol": 0.01, "atol": 0.01},
    {
        "kind": "mlp",
        "method": "dopri5",
        "t": [0.0, 2.0],
        "rtol": 0.01,
        "atol": 0.01,
        "options": {"safety": 0.8, "ifactor": 5.0, "dfactor": 0.3},
    },
    {"kind": "mlp", "method": "dopri5", "t": [0.0, 5.0], "rtol": 1e-7, "atol": 1e-9},
    {
        "kind": "mlp",
        "method": "dopri5",
        "t": [0.0, 5.0],
        "rtol": 1e-8,
        "atol": 1e-8,
        "options": {"first_step": 5.0},
    },
    {"kind": "mlp", "method": "bosh3", "t": [0.0, 1.0], "rtol": 0.1, "atol": 0.1},
    {
        "kind": "mlp",
        "method": "bosh3",
        "t": [0.0, 1.0],
        "rtol": 1e-3,
        "atol": 1e-3,
        "options": {"first_step": 0.05},
    },
    {"kind": "mlp", "method": "adaptive_heun", "t": [0.0, 1.0], "rtol": 0.1, "atol": 0.1},
    {"kind": "mlp", "method": "adaptive_heun", "t": [0.0, 1.0], "rtol": 1e-3, "atol": 1e-3},
    {
        "kind": "mlp",
        "method": "adaptive_heun",
        "t": [0.0, 1.0],
        "rtol": 1e-4,
        "atol": 1e-4,
        "options": {"first_step": 0.5},
    },
    {"kind": "conv", "method": "dopri5", "t": [0.0, 1.0], "rtol": 0.1, "atol": 0.1},
    {"kind": "conv", "method": "dopri5", "t": [0.0, 1.0], "rtol": 1e-3, "atol": 1e-3},
    {
        "kind": "conv",
        "method": "dopri5",
        "t": [0.0, 1.0],
        "rtol": [0.05, 0.2],
        "atol": [0.1, 0.02],
    },
    {"kind": "conv", "method": "dopri5", "t": [0.0, 1.0], "rtol": 1e-6, "atol": 1e-6},
    {"kind": "conv", "method": "bosh3", "t": [0.0, 1.0], "rtol": 0.1, "atol": 0.1},
    {
        "kind": "conv",
        "method": "bosh3",
        "t": [0.0, 1.0],
        "rtol": 1e-3,
        "atol": 1e-3,
        "options": {"first_step": 0.9},
    },
    {"kind": "conv", "method": "adaptive_heun", "t": [0.0, 1.0], "rtol": 0.1, "atol": 0.1},
    # float32, as models train: the solver's arithmetic in the state's dtype
    *(
        {
            "kind": kind,
            "method": method,
            "t": [0.0, 1.0],
            "rtol": tol,
            "atol": tol,
            "dtype": "float32",
        }
        for kind, method, tol in (
            ("mlp", "dopri5", 0.1),
            ("conv", "dopri5", 0.1),
            ("conv", "bosh3", 1e-3),
            ("conv", "adaptive_heun", 0.1),
            ("mlp", "bosh3", 1e-6),
        )
    ),
]

# method -> (module of torchdiffeq._impl, solver class, its one-step method)
STEP_METHODS = {
    "dopri5": ("dopri5", "Dopri5Solver", "_adaptive_dopri5_step"),
    "bosh3": ("bosh3", "Bosh3Solver", "_adaptive_bosh3_step"),
    "adaptive_heun": ("adaptive_heun", "AdaptiveHeunSolver", "_adaptive_heun_step"),
}


def as_tuple(v):
    return v if isinstance(v, tuple) else (v,)


def loss(outputs) -> torch.Tensor:
    return sum((o * o.sin()).sum() for o in as_tuple(outputs))


def run_case(torchdiffeq, case: dict, steps: list) -> dict:
    f, y0 = make_field(case["kind"], getattr(torch, case.get("dtype", "float64")))
    y0 = tuple(v.requires_grad_() for v in y0) if isinstance(y0, tuple) else y0.requires_grad_()
    nfe = [0]

    def counted(t, y):
        nfe[0] += 1
        return f(t, y)

    steps.clear()
    t = torch.tensor(case["t"], dtype=torch.float64)  # torchdiffeq took t as float64 anyway
    out = torchdiffeq.odeint(
        counted,
        y0,
        t,
        rtol=case["rtol"],
        atol=case["atol"],
        method=case["method"],
        options=case.get("options"),
    )
    grads = torch.autograd.grad(loss(out), [*as_tuple(y0), *f.parameters()])
    n_y = len(as_tuple(y0))
    return {
        "case": case,
        "outputs": [o.detach().flatten().tolist() for o in as_tuple(out)],
        "accepted": [[t0, dt] for t0, dt, ok in steps if ok],
        "rejected": [[t0, dt] for t0, dt, ok in steps if not ok],
        "nfe": nfe[0],
        "grad_y0": [g.flatten().tolist() for g in grads[:n_y]],
        "grad_params": [g.flatten().tolist() for g in grads[n_y:]],
    }


def main(path: str) -> None:
    sys.path.insert(0, path)
    import torchdiffeq

    torch.set_num_threads(1)
    steps: list = []
    for module, class_name, step_name in STEP_METHODS.values():
        cls = getattr(importlib.import_module(f"torchdiffeq._impl.{module}"), class_name)
        original = getattr(cls, step_name)

        def logged(self, rk_state, _original=original):
            new = _original(self, rk_state)
            # rk_state = (y1, f1, t0, t1, dt, interp): the step tried starts at t1, its
            # size is dt; it was accepted when the new t1 moved
            steps.append((float(rk_state.t1), float(rk_state.dt), bool(new.t1 != rk_state.t1)))
            return new

        setattr(cls, step_name, logged)
    results = [run_case(torchdiffeq, case, steps) for case in CASES]
    data = {
        "torchdiffeq_commit": "f9539b7dc1bb1f4956d18bbdd32c5cb64cf81fbc",
        "torch": torch.__version__,
        "results": results,
    }
    out = Path(__file__).parent / "data" / "ode_2019_reference.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(data, indent=0) + "\n")
    print(f"wrote {out} ({len(results)} cases)")


if __name__ == "__main__":
    main(sys.argv[1])
