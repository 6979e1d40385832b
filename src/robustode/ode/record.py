"""What a solve did: its accepted and rejected steps and its function evaluations.

The solver appends device tensors (or host floats it already had) and never
reads them back, so keeping a record adds no host–device synchronisation;
the conversion to Python numbers happens when a property is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepRecord:
    """Steps and function evaluations (NFE) of one ODE solve.

    In batch step control every step is one (t0, dt) pair shared by the batch.
    In per-sample step control every entry is a vector over the batch, with
    ``active`` telling which samples were still integrating at that step
    (finished samples are carried along, masked, and are not counted).
    """

    method: str = ""
    step_control: str = "batch"
    nfe_forward: int = 0
    nfe_backward: int = 0
    _t0: list = field(default_factory=list, repr=False)
    _dt: list = field(default_factory=list, repr=False)
    _accepted: list = field(default_factory=list, repr=False)
    _active: list = field(default_factory=list, repr=False)

    def add_step(self, t0, dt, accepted, active=None) -> None:
        """Append one attempted step (values may be device tensors or floats)."""
        self._t0.append(t0)
        self._dt.append(dt)
        self._accepted.append(accepted)
        if active is not None:
            self._active.append(active)

    def negate_times(self, start: int = 0) -> None:
        """Flip the sign of the step start times recorded from index ``start`` on
        (a decreasing time grid is integrated as s = −t)."""
        for i in range(start, len(self._t0)):
            self._t0[i] = -self._t0[i]

    def reset(self) -> None:
        self.nfe_forward = 0
        self.nfe_backward = 0
        self._t0.clear()
        self._dt.clear()
        self._accepted.clear()
        self._active.clear()

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _as_tensor(values: list, dtype=torch.float64) -> torch.Tensor:
        if not values:
            return torch.zeros(0, dtype=dtype)
        return torch.stack(
            [
                torch.as_tensor(v, dtype=dtype if isinstance(v, (float, bool)) else None)
                .detach()
                .to("cpu", dtype)
                for v in values
            ]
        )

    def _steps(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        t0 = self._as_tensor(self._t0)
        dt = self._as_tensor(self._dt)
        acc = self._as_tensor(self._accepted, torch.bool)
        active = self._as_tensor(self._active, torch.bool) if self._active else None
        return t0, dt, acc, active

    @property
    def num_steps(self) -> int:
        return len(self._t0)

    @property
    def per_sample(self) -> bool:
        return self.step_control == "per_sample"

    def accepted_steps(self) -> list[tuple[float, float]] | list[list[tuple[float, float]]]:
        """Accepted (t0, dt) pairs; per sample a list of them for each sample."""
        return self._select(accepted=True)

    def rejected_steps(self) -> list[tuple[float, float]] | list[list[tuple[float, float]]]:
        """Rejected (t0, dt) pairs; per sample a list of them for each sample."""
        return self._select(accepted=False)

    def _select(self, accepted: bool):
        t0, dt, acc, active = self._steps()
        if not self.per_sample:
            mask = acc if accepted else ~acc
            return list(zip(t0[mask].tolist(), dt[mask].tolist(), strict=True))
        if t0.numel() == 0:
            return []
        mask = (acc if accepted else ~acc) & active
        out = []
        for b in range(t0.shape[1]):
            m = mask[:, b]
            out.append(list(zip(t0[m, b].tolist(), dt[m, b].tolist(), strict=True)))
        return out

    @property
    def num_accepted(self) -> int | list[int]:
        steps = self.accepted_steps()
        return [len(s) for s in steps] if self.per_sample else len(steps)

    @property
    def num_rejected(self) -> int | list[int]:
        steps = self.rejected_steps()
        return [len(s) for s in steps] if self.per_sample else len(steps)

    def to_dict(self) -> dict:
        """A JSON-ready summary."""
        return {
            "method": self.method,
            "step_control": self.step_control,
            "nfe_forward": self.nfe_forward,
            "nfe_backward": self.nfe_backward,
            "accepted": self.accepted_steps(),
            "rejected": self.rejected_steps(),
        }
