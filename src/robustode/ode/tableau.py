"""Butcher tableaus of the explicit Runge–Kutta methods robustode integrates with.

The coefficients are the published ones (Dormand & Prince 1980 with Shampine's
dense-output midpoint; Bogacki & Shampine 1989; Heun–Euler; Kutta's 3/8 rule).
The adaptive methods follow torchdiffeq 0.2.5 in two details that change results:

* ``order`` is the exponent the step-size controller uses (dopri5 5, bosh3 3,
  adaptive_heun 2), not the order of the error estimate;
* the derivative carried to the next step (``f1``) is the last stage evaluated,
  which for dopri5/bosh3 is f(t1, y1) (FSAL) but for adaptive_heun is
  f(t1, y0 + dt·k1), the Euler predictor — torchdiffeq does this and the
  SONet results were produced with it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta method.

    ``c[i]`` and ``a[i]`` describe stage ``i + 1`` (stage 0 is f(t0, y0)).
    ``b`` weighs every stage for the solution; ``b_error`` = b − b̂ for the
    embedded error estimate (None for fixed-step methods); ``b_mid`` gives the
    dense-output value at the step midpoint used by the quartic interpolant.
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    b_error: tuple[float, ...] | None = None
    b_mid: tuple[float, ...] | None = None

    @property
    def num_stages(self) -> int:
        return len(self.c) + 1

    @property
    def adaptive(self) -> bool:
        return self.b_error is not None

    @property
    def fsal(self) -> bool:
        """True when the last stage's input is already the solution y1."""
        if not self.a:
            return False
        last = self.a[-1]
        return self.b[-1] == 0.0 and tuple(self.b[:-1]) == tuple(last)


DOPRI5 = ButcherTableau(
    name="dopri5",
    c=(1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    b_error=(
        35 / 384 - 1951 / 21600,
        0.0,
        500 / 1113 - 22642 / 50085,
        125 / 192 - 451 / 720,
        -2187 / 6784 + 12231 / 42400,
        11 / 84 - 649 / 6300,
        -1 / 60,
    ),
    b_mid=(
        6025192743 / 30085553152 / 2,
        0.0,
        51252292925 / 65400821598 / 2,
        -2691868925 / 45128329728 / 2,
        187940372067 / 1594534317056 / 2,
        -1776094331 / 19743644256 / 2,
        11237099 / 235043384 / 2,
    ),
    order=5,
)

BOSH3 = ButcherTableau(
    name="bosh3",
    c=(1 / 2, 3 / 4, 1.0),
    a=((1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    b_error=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
    b_mid=(0.0, 0.5, 0.0, 0.0),
    order=3,
)

ADAPTIVE_HEUN = ButcherTableau(
    name="adaptive_heun",
    c=(1.0,),
    a=((1.0,),),
    b=(0.5, 0.5),
    b_error=(0.5, -0.5),
    b_mid=(0.5, 0.0),
    order=2,
)

EULER = ButcherTableau(name="euler", c=(), a=(), b=(1.0,), order=1)

# Kutta's 3/8 rule: torchdiffeq's "rk4".
RK4_38 = ButcherTableau(
    name="rk4",
    c=(1 / 3, 2 / 3, 1.0),
    a=((1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
    b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
    order=4,
)

TABLEAUS: dict[str, ButcherTableau] = {
    t.name: t for t in (DOPRI5, BOSH3, ADAPTIVE_HEUN, EULER, RK4_38)
}
ADAPTIVE_METHODS = tuple(name for name, t in TABLEAUS.items() if t.adaptive)
FIXED_METHODS = tuple(name for name, t in TABLEAUS.items() if not t.adaptive)
