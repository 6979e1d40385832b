"""ODE solve: robustode's native engine vs torchdiffeq 0.2.5 on the SOBlock stem.

The vector field is the SONet reference stem (skew conv block 3 → width,
GroupNorm, LeakyReLU) on CIFAR-shaped input. Both solvers must take the same
grid (asserted through equal NFE) so the ratio compares equal work.

    python -m benchmarks.bench_ode [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
import torchdiffeq

from robustode.nn import SkewConvODE
from robustode.ode import StepRecord, odeint

from .timing import interleaved_medians

CASES = [
    ("dopri5", 0.1),
    ("dopri5", 0.01),
    ("bosh3", 0.1),
    ("bosh3", 0.01),
    ("adaptive_heun", 0.1),
    ("adaptive_heun", 0.01),
    ("rk4", None),
    ("euler", None),
]


class _Counted(torch.nn.Module):
    def __init__(self, field) -> None:
        super().__init__()
        self.field, self.nfe = field, 0

    def forward(self, t, y):
        self.nfe += 1
        return self.field(t, y)


def run(width: int, batch: int, size: int, repeats: int, quick: bool) -> list[dict]:
    torch.manual_seed(0)
    block = SkewConvODE(3, width)
    x = torch.rand(batch, 3, size, size)
    state0 = block.initial_state(x)
    t = torch.tensor([0.0, 1.0])
    rows = []
    cases = CASES[::2] if quick else CASES
    for method, tol in cases:
        kw = dict(method=method)
        if tol is not None:
            kw.update(rtol=tol, atol=tol)
        else:
            kw.update(options={"step_size": 0.25})
        for mode in ("forward", "forward+backward"):
            grad = mode != "forward"
            ours_rec = StepRecord()
            peer = _Counted(block.field)

            def ours(grad=grad, rec=ours_rec, kw=kw):
                rec.reset()
                xin = x.clone().requires_grad_(grad)
                with torch.set_grad_enabled(grad):
                    out = odeint(block.field, (xin, state0[1]), t, record=rec, **kw)[1][-1]
                    if grad:
                        out.sum().backward()

            def theirs(grad=grad, peer=peer, kw=kw):
                peer.nfe = 0
                xin = x.clone().requires_grad_(grad)
                with torch.set_grad_enabled(grad):
                    out = torchdiffeq.odeint(peer, (xin, state0[1]), t, **kw)[1][-1]
                    if grad:
                        out.sum().backward()

            t_ours, t_peer = interleaved_medians(ours, theirs, repeats=repeats)
            assert ours_rec.nfe_forward == peer.nfe, (method, tol, ours_rec.nfe_forward, peer.nfe)
            rows.append(
                {
                    "method": method,
                    "tol": tol,
                    "mode": mode,
                    "nfe": peer.nfe,
                    "ours_s": t_ours,
                    "torchdiffeq_s": t_peer,
                    "ratio": t_ours / t_peer,
                }
            )
            print(
                f"{method:>13} tol={tol!s:>5} {mode:>16}: nfe {peer.nfe:3d}  "
                f"ours {t_ours * 1e3:8.1f} ms  torchdiffeq {t_peer * 1e3:8.1f} ms  "
                f"ratio {t_ours / t_peer:.2f}",
                flush=True,
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="half the cases, smaller batch")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    batch = 32 if args.quick else args.batch
    torch.set_num_threads(torch.get_num_threads())
    rows = run(args.width, batch, 32, args.repeats, args.quick)
    meta = {
        "benchmark": "ode-solve-soblock-stem",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchdiffeq": torchdiffeq.__version__ if hasattr(torchdiffeq, "__version__") else "0.2.5",
        "python": platform.python_version(),
        "width": args.width,
        "batch": batch,
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(meta, f, indent=2)


if __name__ == "__main__":
    main()
