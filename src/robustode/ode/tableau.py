"""Butcher tableaus of the explicit Runge–Kutta methods robustode integrates with.

The coefficients are the published ones (Dormand & Prince 1980 with Shampine's
dense-output midpoint; Prince & Dormand 1981's 8(7) pair; Bogacki & Shampine
1989; Fehlberg's 1(2) pair, 1969; Heun–Euler; the explicit midpoint rule;
Heun's second- and third-order methods; Kutta's 3/8 rule). The adaptive
methods follow torchdiffeq 0.2.5 in three details that change results:

* ``order`` is the exponent the step-size controller uses (dopri8 8, dopri5 5,
  bosh3 3, adaptive_heun and fehlberg2 2), not the order of the error estimate;
* the derivative carried to the next step (``f1``) is the last stage evaluated,
  which for dopri8/dopri5/bosh3 is f(t1, y1) (FSAL) but for adaptive_heun is
  f(t1, y0 + dt·k1), the Euler predictor, and for fehlberg2 f at its second
  stage's end point — torchdiffeq does this and the SONet results were
  produced with it;
* the dense output is the quartic through y0, y1, the value ``b_mid`` gives at
  the step's midpoint and the two end slopes, for every adaptive method.

The fixed-step tableaus here describe the methods; their steps are computed
by :mod:`.fixed_steps` in torchdiffeq's order of operations.
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

# Fehlberg's embedded 1(2) pair (torchdiffeq's "fehlberg2"): the solution is the
# second-order weights, the error their difference from the first-order ones.
FEHLBERG2 = ButcherTableau(
    name="fehlberg2",
    c=(1 / 2, 1.0),
    a=((1 / 2,), (1 / 256, 255 / 256)),
    b=(1 / 512, 255 / 256, 1 / 512),
    b_error=(-1 / 512, 0.0, 1 / 512),
    b_mid=(0.0, 0.5, 0.0),
    order=2,
)

# Prince & Dormand (1981), the 13-stage 8(7) pair as rational approximations, with
# its FSAL 14th stage; b_error = b − b̂ (b̂ the seventh-order weights).
_DOPRI8_B = (
    14005451 / 335480064,
    0.0,
    0.0,
    0.0,
    0.0,
    -59238493 / 1068277825,
    181606767 / 758867731,
    561292985 / 797845732,
    -1041891430 / 1371343529,
    760417239 / 1151165299,
    118820643 / 751138087,
    -528747749 / 2220607170,
    1 / 4,
)
_DOPRI8_B_HAT = (
    13451932 / 455176623,
    0.0,
    0.0,
    0.0,
    0.0,
    -808719846 / 976000145,
    1757004468 / 5645159321,
    656045339 / 265891186,
    -3867574721 / 1518517206,
    465885868 / 322736535,
    53011238 / 667516719,
    2 / 45,
    0.0,
)
DOPRI8 = ButcherTableau(
    name="dopri8",
    c=(
        1 / 18,
        1 / 12,
        1 / 8,
        5 / 16,
        3 / 8,
        59 / 400,
        93 / 200,
        5490023248 / 9719169821,
        13 / 20,
        1201146811 / 1299019798,
        1.0,
        1.0,
        1.0,
    ),
    a=(
        (1 / 18,),
        (1 / 48, 1 / 16),
        (1 / 32, 0.0, 3 / 32),
        (5 / 16, 0.0, -75 / 64, 75 / 64),
        (3 / 80, 0.0, 0.0, 3 / 16, 3 / 20),
        (
            29443841 / 614563906,
            0.0,
            0.0,
            77736538 / 692538347,
            -28693883 / 1125000000,
            23124283 / 1800000000,
        ),
        (
            16016141 / 946692911,
            0.0,
            0.0,
            61564180 / 158732637,
            22789713 / 633445777,
            545815736 / 2771057229,
            -180193667 / 1043307555,
        ),
        (
            39632708 / 573591083,
            0.0,
            0.0,
            -433636366 / 683701615,
            -421739975 / 2616292301,
            100302831 / 723423059,
            790204164 / 839813087,
            800635310 / 3783071287,
        ),
        (
            246121993 / 1340847787,
            0.0,
            0.0,
            -37695042795 / 15268766246,
            -309121744 / 1061227803,
            -12992083 / 490766935,
            6005943493 / 2108947869,
            393006217 / 1396673457,
            123872331 / 1001029789,
        ),
        (
            -1028468189 / 846180014,
            0.0,
            0.0,
            8478235783 / 508512852,
            1311729495 / 1432422823,
            -10304129995 / 1701304382,
            -48777925059 / 3047939560,
            15336726248 / 1032824649,
            -45442868181 / 3398467696,
            3065993473 / 597172653,
        ),
        (
            185892177 / 718116043,
            0.0,
            0.0,
            -3185094517 / 667107341,
            -477755414 / 1098053517,
            -703635378 / 230739211,
            5731566787 / 1027545527,
            5232866602 / 850066563,
            -4093664535 / 808688257,
            3962137247 / 1805957418,
            65686358 / 487910083,
        ),
        (
            403863854 / 491063109,
            0.0,
            0.0,
            -5068492393 / 434740067,
            -411421997 / 543043805,
            652783627 / 914296604,
            11173962825 / 925320556,
            -13158990841 / 6184727034,
            3936647629 / 1978049680,
            -160528059 / 685178525,
            248638103 / 1413531060,
            0.0,
        ),
        _DOPRI8_B,
    ),
    b=(*_DOPRI8_B, 0.0),
    b_error=(*(b - bh for b, bh in zip(_DOPRI8_B, _DOPRI8_B_HAT, strict=True)), 0.0),
    # The weights of the method's seventh-order continuous extension at θ = 1/2,
    # as torchdiffeq 0.2.5 tabulates them (float64 values).
    b_mid=(
        0.04103130360739393,
        0.0,
        0.0,
        0.0,
        0.0,
        0.05100562801991382,
        0.2388930677412202,
        0.3096870143996103,
        -0.2172325471755352,
        0.07833405679331928,
        -0.0018614369715579948,
        0.007072844202678841,
        0.00690847373200576,
        -0.013838404349047373,
    ),
    order=8,
)

EULER = ButcherTableau(name="euler", c=(), a=(), b=(1.0,), order=1)
MIDPOINT = ButcherTableau(name="midpoint", c=(1 / 2,), a=((1 / 2,),), b=(0.0, 1.0), order=2)
HEUN2 = ButcherTableau(name="heun2", c=(1.0,), a=((1.0,),), b=(1 / 2, 1 / 2), order=2)
HEUN3 = ButcherTableau(
    name="heun3",
    c=(1 / 3, 2 / 3),
    a=((1 / 3,), (0.0, 2 / 3)),
    b=(1 / 4, 0.0, 3 / 4),
    order=3,
)

# Kutta's 3/8 rule: torchdiffeq's "rk4".
RK4_38 = ButcherTableau(
    name="rk4",
    c=(1 / 3, 2 / 3, 1.0),
    a=((1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
    b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
    order=4,
)

# dopri5 first: the default, named first wherever the methods are listed
TABLEAUS: dict[str, ButcherTableau] = {
    t.name: t
    for t in (
        DOPRI5,
        DOPRI8,
        BOSH3,
        FEHLBERG2,
        ADAPTIVE_HEUN,
        EULER,
        MIDPOINT,
        HEUN2,
        HEUN3,
        RK4_38,
    )
}
# Linear multistep methods on a fixed grid (:mod:`.adams`); "fixed_adams" is
# torchdiffeq's older name for "implicit_adams".
ADAMS_METHODS = ("explicit_adams", "implicit_adams", "fixed_adams")
ADAPTIVE_METHODS = tuple(name for name, t in TABLEAUS.items() if t.adaptive)
FIXED_METHODS = (*(name for name, t in TABLEAUS.items() if not t.adaptive), *ADAMS_METHODS)
