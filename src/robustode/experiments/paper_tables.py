"""The published numbers of every table of both papers, as data.

Each :class:`PaperTable` lists its columns (what is measured: clean accuracy
or one attack) and its rows (what is trained: model, solver, defense) with
the paper's figures in percent. :mod:`robustode.experiments.reproduce` turns
a table into training runs and evaluations at full or smoke scale and prints
our numbers next to these.

Sources (docs/references.md): SONet Tables 1–4 (CIFAR-10; §5–6), LAD Tables 1–7
(CIFAR-10/100; §4 and appendices C–D). Where the paper's text is garbled
in places (LAD Table 6's baseline rows) the values were read digit by digit
from the surviving characters; such cells are marked in ``notes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Column:
    """One measured quantity: clean accuracy (``attack=None``) or robust accuracy under an
    attack spec (``NAME`` or ``NAME:key=value,…``, see ``robustode attacks``).

    ``averaged``: the column enters the table's Avg (LAD's Avg is the mean of its four FGSM
    and IFGSM columns; a column the paper does not have stays out of it)."""

    key: str
    header: str
    attack: str | None = None
    averaged: bool = True


@dataclass(frozen=True)
class Row:
    """One trained model: TrainConfig fields (model, model_options, defense, …) beyond the
    table's recipe, the paper's values by column key, and inference options
    (``noisy_ensemble``: logits averaged over k noisy passes, LAD §4.4)."""

    label: str
    train: dict[str, Any]
    paper: dict[str, float]
    group: str = ""
    inference: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PaperTable:
    name: str
    paper: str
    number: int
    title: str
    recipe: str  # the training preset (robustode.train.config.PRESETS) of the full scale
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    kind: str = "robustness"  # or "steps" (SONet Table 3), "eq16" (LAD Fig. 2: a figure)
    notes: tuple[str, ...] = ()

    @property
    def is_figure(self) -> bool:
        """A figure's rows give a series per training epoch, not attack cells."""
        return self.kind in FIGURE_KINDS

    @property
    def caption(self) -> str:
        """``Table N`` or ``Fig. N``, as the paper numbers it."""
        return f"{'Fig.' if self.is_figure else 'Table'} {self.number}"


FIGURE_KINDS = ("eq16",)


# ------------------------------------------------------------------------------ SONet
_SONET_LINF = "ε 0.031"
_PGD20 = (
    Column("clean", "clean"),
    Column("pgd20_linf", f"PGD20 L∞ ({_SONET_LINF})", "pgd20-linf"),
    Column("pgd20_l2", "PGD20 L2 (ε 0.5)", "pgd20-l2"),
)
_PGD1000 = (
    Column("pgd1000_linf", f"PGD1000 L∞ ({_SONET_LINF})", "pgd1000-linf"),
    Column("pgd1000_l2", "PGD1000 L2 (ε 0.5)", "pgd1000-l2"),
)


def _sonet_models(width: int) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("SONet", {"model": "sonet", "model_options": {"width": width}}),
        ("SOBlock", {"model": "soblock", "model_options": {"width": width}}),
        (
            "ResNet10-TRADES (1/λ = 1)",
            {
                "model": "resnet10",
                "model_options": {"width": width},
                "defense": "trades",
                "defense_options": {"beta": 1.0},
            },
        ),
        (
            "ResNet10-TRADES (1/λ = 6)",
            {
                "model": "resnet10",
                "model_options": {"width": width},
                "defense": "trades",
                "defense_options": {"beta": 6.0},
            },
        ),
    ]


# (clean, PGD20 L∞, PGD20 L2, PGD1000 L∞, PGD1000 L2) per model, widths 32 and 64
_SONET_T1 = {
    32: [
        (88.08, 53.67, 57.39, 19.62, 31.75),
        (90.28, 58.21, 60.25, 52.01, 52.79),
        (81.52, 35.26, 57.07, 33.60, 56.70),
        (73.69, 43.46, 55.73, 43.30, 55.48),
    ],
    64: [
        (89.36, 61.62, 64.08, 24.25, 39.79),
        (91.57, 62.35, 64.70, 55.43, 57.37),
        (82.74, 37.64, 58.97, 35.78, 58.73),
        (76.29, 45.24, 57.28, 44.70, 56.87),
    ],
}
# (clean, CW-L∞, SPSA)
_SONET_T4 = {
    32: [(88.08, 0.0, 2.50), (90.28, 0.0, 7.64), (81.52, 37.61, 68.30), (73.69, 38.92, 63.60)],
    64: [(89.36, 11.20, 15.10), (91.57, 0.0, 11.68), (82.74, 35.78, 69.97), (76.29, 39.77, 65.97)],
}


# The Table 1 variant: the SONet of the paper's text (models/sonet.py), next to its SONet
# row of the same width and with the paper's SONet figures, which it reports for one SONet
# without saying which build gave them.
PAPER_TEXT_SONET = "SONet (paper text)"


def _sonet_t1() -> PaperTable:
    rows = []
    keys = ("clean", "pgd20_linf", "pgd20_l2", "pgd1000_linf", "pgd1000_l2")
    for width, values in _SONET_T1.items():
        for (label, train), numbers in zip(_sonet_models(width), values, strict=True):
            paper = dict(zip(keys, numbers, strict=True))
            rows.append(Row(f"{label} {width}", train, paper, f"{width}"))
            if label == "SONet":
                text = {"model": "sonet_paper_text", "model_options": {"width": width}}
                rows.append(Row(f"{PAPER_TEXT_SONET} {width}", text, paper, f"{width}"))
    return PaperTable(
        "sonet-t1",
        "sonet",
        1,
        "SONet and SOBlock (natural training) vs ResNet10-TRADES under white-box PGD, CIFAR-10",
        "sonet",
        _PGD20 + _PGD1000,
        tuple(rows),
        notes=(
            "SONet (paper text) is the network §4 and Fig. 2 describe (sonet_paper_text: one "
            "ODE block per stage, 3×3 stride-2 kernels, classifier σ after the map, z(0) = 1; "
            "1.60 M parameters at width 64); SONet is the reference code's (5.94 M). The paper "
            "reports one SONet; its figures are printed next to both.",
        ),
    )


def _sonet_t4() -> PaperTable:
    rows = []
    for width, values in _SONET_T4.items():
        for (label, train), (clean, cw, spsa) in zip(_sonet_models(width), values, strict=True):
            rows.append(
                Row(f"{label} {width}", train, {"clean": clean, "cw": cw, "spsa": spsa}, f"{width}")
            )
    return PaperTable(
        "sonet-t4",
        "sonet",
        4,
        "SONet and SOBlock (natural training) vs ResNet10-TRADES under CW-L∞ and SPSA, CIFAR-10",
        "sonet",
        (
            Column("clean", "clean"),
            Column("cw", "CW-L∞ (ε 0.031)", "cw-linf"),
            Column("spsa", "SPSA (ε 8/255)", "spsa"),
        ),
        tuple(rows),
    )


# SONet Table 2: (model, solver label, solver options, clean, PGD20, PGD1000)
_SONET_T2 = [
    ("SOBlock", "Euler", {"method": "euler"}, 94.41, 0.0, 0.0),
    ("SOBlock", "RK4 (3/8 rule)", {"method": "rk4"}, 92.06, 0.0, 0.0),
    ("SOBlock", "Dopri5 (tol 0.1)", {"method": "dopri5", "tol": 0.1}, 94.22, 71.20, 63.20),
    ("SOBlock", "Dopri5 (tol 0.01)", {"method": "dopri5", "tol": 0.01}, 93.98, 64.66, 46.40),
    ("SOBlock", "Dopri5 (tol 0.001)", {"method": "dopri5", "tol": 0.001}, 94.32, 63.87, 46.20),
    ("SOBlock", "Bosh3 (tol 0.1)", {"method": "bosh3", "tol": 0.1}, 92.85, 66.00, 52.84),
    ("SOBlock", "Bosh3 (tol 0.01)", {"method": "bosh3", "tol": 0.01}, 92.30, 67.06, 59.74),
    ("SOBlock", "Bosh3 (tol 0.001)", {"method": "bosh3", "tol": 0.001}, 92.38, 65.03, 55.31),
    (
        "SOBlock",
        "Adaptive Heun (tol 0.1)",
        {"method": "adaptive_heun", "tol": 0.1},
        92.42,
        61.16,
        55.84,
    ),
    (
        "SOBlock",
        "Adaptive Heun (tol 0.01)",
        {"method": "adaptive_heun", "tol": 0.01},
        92.43,
        63.95,
        53.79,
    ),
    (
        "SOBlock",
        "Adaptive Heun (tol 0.001)",
        {"method": "adaptive_heun", "tol": 0.001},
        92.73,
        57.68,
        45.33,
    ),
    ("ODENet", "Euler", {"method": "euler"}, 87.04, 0.0, 0.0),
    ("ODENet", "RK4 (3/8 rule)", {"method": "rk4"}, 87.78, 0.0, 0.0),
    ("ODENet", "Dopri5 (tol 0.1)", {"method": "dopri5", "tol": 0.1}, 87.41, 42.69, 13.14),
    ("ODENet", "Dopri5 (tol 0.01)", {"method": "dopri5", "tol": 0.01}, 87.46, 37.20, 8.36),
    ("ODENet", "Dopri5 (tol 0.001)", {"method": "dopri5", "tol": 0.001}, 87.54, 36.19, 7.75),
]
# §6.1: "We use WRN-34-10 as our base network for SOBlock in this section"
_T2_MODELS = {"SOBlock": "wrn34_10_soblock", "ODENet": "odenet"}


def _sonet_t2() -> PaperTable:
    rows = tuple(
        Row(
            f"{model} {solver}",
            {"model": _T2_MODELS[model], "model_options": dict(options)},
            {"clean": clean, "pgd20_linf": pgd20, "pgd1000_linf": pgd1000},
            model,
        )
        for model, solver, options, clean, pgd20, pgd1000 in _SONET_T2
    )
    return PaperTable(
        "sonet-t2",
        "sonet",
        2,
        "SOBlock (WRN-34-10 base) and ODENet with fixed-step and adaptive solvers under PGD L∞",
        "sonet",
        (_PGD20[0], _PGD20[1], _PGD1000[0]),
        rows,
        notes=("§6.1 trains SOBlock on a WRN-34-10 base (wrn34_10_soblock here).",),
    )


# SONet Table 3: the accepted dopri5 grid of ODENet after k PGD-L∞ iterations
_SONET_T3 = {
    0.1: {1: [0.0, 0.262, 1.0], 100: [0.0, 0.253, 1.0], 1000: [0.0, 0.244, 1.0]},
    0.01: {
        1: [0.0, 0.155, 0.827, 1.0],
        100: [0.0, 0.150, 0.793, 1.0],
        1000: [0.0, 0.149, 0.789, 1.0],
    },
    0.001: {
        1: [0.0, 0.097, 0.423, 1.0],
        100: [0.0, 0.096, 0.420, 1.0],
        1000: [0.0, 0.094, 0.409, 0.981, 1.0],
    },
}


def sonet_t3_grids() -> dict[float, dict[int, list[float]]]:
    """SONet Table 3: tolerance → PGD iterations → the accepted adaptive time grid."""
    return {tol: {k: list(g) for k, g in grids.items()} for tol, grids in _SONET_T3.items()}


def _sonet_t3() -> PaperTable:
    rows = tuple(
        Row(
            f"ODENet Dopri5 (tol {tol:g})",
            {"model": "odenet", "model_options": {"method": "dopri5", "tol": tol}},
            {},
            "ODENet",
        )
        for tol in _SONET_T3
    )
    return PaperTable(
        "sonet-t3",
        "sonet",
        3,
        "Adaptive steps of ODENet under dopri5 tolerances along a PGD L∞ trajectory",
        "sonet",
        (Column("grid", "accepted grid after k PGD iterations"),),
        rows,
        kind="steps",
    )


# ------------------------------------------------------------------------------ LAD
def _lad_columns(small: bool) -> tuple[Column, ...]:
    """FGSM and IFGSM-20 without random start at two radii (LAD §4; α per docs/references.md)."""
    if small:  # natural training: ε 0.5/255 and 1/255, IFGSM α 0.5/255
        radii, alpha = ((0.5, "0.5/255"), (1.0, "1/255")), 0.5
    else:  # adversarial training: ε 8/255 and 12/255, IFGSM α 2/255
        radii, alpha = ((8.0, "8/255"), (12.0, "12/255")), 2.0
    cols = [Column("clean", "clean")]
    for value, text in radii:
        cols.append(Column(f"fgsm_{value:g}", f"FGSM {text}", f"fgsm:eps={value / 255!r}"))
    for value, text in radii:
        spec = f"ifgsm20:eps={value / 255!r},step_size={alpha / 255!r}"
        cols.append(Column(f"ifgsm_{value:g}", f"IFGSM {text}", spec))
    return tuple(cols)


def _lad_rows(
    values: dict[str, tuple[float, ...]],
    keys: tuple[str, ...],
    data: str,
    base_defense: str,
    group: str,
) -> list[Row]:
    """Rows of a LAD table: each method's training (on preact_resnet56) and its numbers."""
    rows = []
    for label, numbers in values.items():
        train: dict[str, Any] = {"model": "preact_resnet56", "data": data}
        inference: dict[str, Any] = {}
        method = label.split(" + ")[1:] if " + " in label else []
        base = base_defense
        if "damp" in method:
            train["model"] = "inresnet56"
        if "λ-damp" in method:
            train["model"] = "lambda_inresnet56"
        lad = "LAD-SM" if "LAD-SM" in method else ("LAD" if "LAD" in method else None)
        eta = 1000.0 if data == "cifar100" else 50.0
        if lad:
            defense: dict[str, Any] = {
                "defense": "lad_sm" if lad == "LAD-SM" else "lad",
                "defense_options": {"base": base, "eta": eta},
            }
        else:
            defense = {"defense": base, "defense_options": {}}
        if base == "pgd_at" and not lad:
            defense["defense_options"] = dict(_PGD_AT)
        if base == "trades" and not lad:
            defense["defense_options"] = {"beta": 6.0, "eps": 8 / 255, "step_size": 2 / 255}
        if "noise" in method:
            defense = {
                "defense": "noise",
                "defense_options": {
                    "std": 0.1,
                    "base": defense["defense"],
                    "base_options": defense["defense_options"],
                },
            }
            inference = {"noisy_ensemble": {"k": 100, "std": 0.1}}
        train.update(defense)
        rows.append(
            Row(
                f"{group} {label}".strip(),
                train,
                dict(zip(keys, numbers, strict=True)),
                group,
                inference,
            )
        )
    return rows


_AVG = Column("avg", "Avg")
# Not in the paper: AutoAttack at 8/255 for the noise tables. reproduce runs its rand version
# (APGD-CE and APGD-DLR with EOT) on the rows evaluated through NoisyEnsemble — randomised
# models — and the standard version on the others (reproduce.row_attack).
_AUTOATTACK = Column(
    "autoattack", "AutoAttack 8/255", f"autoattack:eps={8 / 255!r}", averaged=False
)
_AUTOATTACK_NOTE = (
    "AutoAttack 8/255 is not in the paper: the rows evaluated through NoisyEnsemble (logits "
    "averaged over noisy passes, a randomised model) run AutoAttack's rand version (APGD-CE "
    "and APGD-DLR with EOT over 20 passes), the other rows its standard version; the Avg "
    "leaves it out."
)
_PGD_AT = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 10}  # LAD §4.2: α 2/255, 10 steps
_KEYS_SMALL = ("clean", "fgsm_0.5", "fgsm_1", "ifgsm_0.5", "ifgsm_1", "avg")
_KEYS_LARGE = ("clean", "fgsm_8", "fgsm_12", "ifgsm_8", "ifgsm_12", "avg")

_LAD_T1 = {
    "cifar10": {
        "natural": (92.89, 67.22, 49.80, 56.98, 19.20, 48.30),
        "natural + damp": (92.77, 70.91, 53.17, 64.26, 27.95, 54.07),
        "natural + λ-damp": (92.90, 70.75, 52.70, 63.73, 26.68, 53.47),
        "natural + LAD": (93.04, 71.79, 51.18, 66.02, 28.27, 54.32),
        "natural + LAD-SM": (93.05, 70.91, 50.82, 65.20, 27.36, 53.57),
    },
    "cifar100": {
        "natural": (71.35, 33.27, 21.25, 24.15, 5.54, 21.05),
        "natural + damp": (70.89, 35.75, 22.10, 28.14, 7.35, 23.34),
        "natural + λ-damp": (70.44, 35.83, 22.13, 27.94, 7.42, 23.33),
        "natural + LAD": (70.21, 39.74, 22.95, 33.81, 9.90, 26.60),
        "natural + LAD-SM": (70.28, 40.33, 23.92, 34.74, 11.30, 27.57),
    },
}
_LAD_T2 = {
    "cifar10": {
        "PGD": (82.14, 53.55, 42.48, 44.79, 25.46, 41.57),
        "PGD + damp": (82.12, 53.39, 41.96, 44.43, 25.31, 41.27),
        "PGD + λ-damp": (82.58, 53.89, 42.40, 44.51, 25.41, 41.55),
        "PGD + LAD": (82.03, 53.99, 42.37, 46.07, 26.88, 42.33),
        "PGD + LAD-SM": (81.67, 53.79, 42.60, 46.21, 27.45, 42.51),
    },
    "cifar100": {
        "PGD": (56.85, 23.71, 16.10, 17.74, 8.52, 16.52),
        "PGD + damp": (53.16, 19.89, 13.22, 12.40, 5.22, 12.68),
        "PGD + λ-damp": (56.14, 19.27, 13.06, 12.03, 5.51, 12.47),
        "PGD + LAD": (58.11, 26.70, 17.99, 22.44, 11.85, 19.75),
        "PGD + LAD-SM": (57.97, 26.79, 17.94, 22.39, 11.58, 19.68),
    },
}
_LAD_T3 = {
    "cifar10": {
        "TRADES": (79.08, 54.70, 45.09, 49.85, 34.69, 46.08),
        "TRADES + LAD": (78.47, 55.19, 45.53, 50.80, 35.86, 46.85),
        "TRADES + LAD-SM": (78.49, 55.13, 45.26, 50.68, 35.60, 46.67),
    },
    "cifar100": {
        "TRADES": (52.53, 28.51, 21.38, 25.86, 16.87, 23.16),
        "TRADES + LAD": (52.46, 29.30, 21.70, 27.10, 17.83, 23.98),
        "TRADES + LAD-SM": (52.60, 29.16, 21.78, 26.97, 17.78, 23.92),
    },
}
_LAD_T4 = {
    "PGD": (82.14, 53.55, 42.48, 44.79, 25.46, 41.57),
    "PGD + noise": (82.48, 53.77, 42.54, 44.63, 25.51, 41.61),
    "PGD + LAD": (82.03, 53.99, 42.37, 46.07, 26.88, 42.33),
    "PGD + LAD-SM": (81.67, 53.79, 42.60, 46.21, 27.45, 42.51),
    "PGD + LAD + noise": (81.79, 54.08, 42.41, 46.34, 27.16, 42.50),
    "PGD + LAD-SM + noise": (81.99, 54.35, 43.00, 46.49, 27.54, 42.85),
}
_LAD_T7 = {
    "PGD": (56.85, 23.71, 16.10, 17.74, 8.52, 16.52),
    "PGD + noise": (55.86, 23.35, 15.54, 17.71, 8.21, 16.20),
    "PGD + LAD": (58.11, 26.70, 17.99, 22.44, 11.85, 19.75),
    "PGD + LAD-SM": (57.97, 26.79, 17.94, 22.39, 11.58, 19.68),
    "PGD + LAD + noise": (58.14, 26.48, 17.98, 22.44, 11.77, 19.67),
    "PGD + LAD-SM + noise": (57.54, 26.28, 17.70, 22.19, 11.35, 19.38),
}
_BASE = {"natural": "natural", "PGD": "pgd_at", "TRADES": "trades"}


def _lad_table(
    number: int, title: str, values: dict, small: bool, *, autoattack: bool = False
) -> PaperTable:
    keys = _KEYS_SMALL if small else _KEYS_LARGE
    rows: list[Row] = []
    for data, methods in values.items():
        base = _BASE[next(iter(methods)).split(" + ")[0]]
        group = "CIFAR-10" if data == "cifar10" else "CIFAR-100"
        rows += _lad_rows(methods, keys, data, base, group)
    recipe = "lad-cifar10"
    extra = (_AUTOATTACK,) if autoattack else ()
    return PaperTable(
        f"lad-t{number}",
        "lad",
        number,
        title,
        recipe,
        (*_lad_columns(small), _AVG, *extra),
        tuple(rows),
        notes=(_AUTOATTACK_NOTE,) if autoattack else (),
    )


def _lad_t5() -> PaperTable:
    """LAD Table 5: η sweep, CIFAR-100, PGD training, FGSM and IFGSM at 8/255."""
    fgsm = {0: 23.71, 1: 23.02, 10: 24.97, 100: 23.09, 1000: 26.70, 10000: 17.07}
    ifgsm = {0: 17.74, 1: 17.42, 10: 19.59, 100: 18.01, 1000: 22.44, 10000: 15.20}
    fgsm_sm = {1: 24.49, 10: 22.43, 100: 24.31, 1000: 26.79, 10000: 17.87}
    ifgsm_sm = {1: 18.97, 10: 15.98, 100: 19.54, 1000: 22.39, 10000: 15.30}
    rows = []
    for method, f, i in (("LAD", fgsm, ifgsm), ("LAD-SM", fgsm_sm, ifgsm_sm)):
        for eta in f:
            training: dict[str, Any] = {
                "defense": "lad_sm" if method == "LAD-SM" else "lad",
                "defense_options": {"base": "pgd_at", "eta": float(eta)},
            }
            if eta == 0:  # η = 0 is plain PGD training (LAD §4.5)
                training = {"defense": "pgd_at", "defense_options": dict(_PGD_AT)}
            rows.append(
                Row(
                    f"PGD + {method} η={eta:g}",
                    {"model": "preact_resnet56", "data": "cifar100", **training},
                    {"fgsm_8": f[eta], "ifgsm_8": i[eta]},
                    method,
                )
            )
    cols = _lad_columns(False)
    return PaperTable(
        "lad-t5",
        "lad",
        5,
        "The effect of η: PGD + LAD / LAD-SM on CIFAR-100 under FGSM and IFGSM at 8/255",
        "lad-cifar100",
        (cols[1], cols[3]),
        tuple(rows),
        notes=("η = 0 is plain PGD training (the paper lists it once, under LAD).",),
    )


def _lad_t6() -> PaperTable:
    """LAD Table 6 (appendix C): IFGSM-20/100/1000 at 8/255."""
    values = {
        "cifar10": {
            "PGD": (82.14, 44.79, 44.25, 44.18),
            "PGD + LAD": (82.03, 46.07, 45.64, 45.58),
            "PGD + LAD-SM": (81.67, 46.21, 45.90, 45.82),
            "TRADES": (79.08, 49.85, 49.67, 49.62),
            "TRADES + LAD": (78.47, 50.80, 50.66, 50.64),
            "TRADES + LAD-SM": (78.49, 50.68, 50.57, 50.54),
        },
        "cifar100": {
            "PGD": (56.85, 17.74, 17.39, 17.27),
            "PGD + LAD": (58.11, 22.44, 22.29, 22.26),
            "PGD + LAD-SM": (57.97, 22.39, 22.21, 22.17),
            "TRADES": (52.53, 25.86, 25.80, 25.78),
            "TRADES + LAD": (52.46, 27.10, 27.05, 27.05),
            "TRADES + LAD-SM": (52.60, 26.97, 26.92, 26.92),
        },
    }
    keys = ("clean", "ifgsm20", "ifgsm100", "ifgsm1000")
    rows: list[Row] = []
    for data, methods in values.items():
        group = "CIFAR-10" if data == "cifar10" else "CIFAR-100"
        for base_label in ("PGD", "TRADES"):
            part = {k: v for k, v in methods.items() if k.split(" + ")[0] == base_label}
            rows += _lad_rows(part, keys, data, _BASE[base_label], group)
    step = 2 / 255
    cols = [Column("clean", "clean")]
    for k in (20, 100, 1000):
        cols.append(
            Column(f"ifgsm{k}", f"IFGSM-{k} 8/255", f"ifgsm20:steps={k},step_size={step!r}")
        )
    return PaperTable(
        "lad-t6",
        "lad",
        6,
        "Stronger attacks: IFGSM-20/100/1000 at 8/255 after PGD and TRADES training (appendix C)",
        "lad-cifar10",
        tuple(cols),
        tuple(rows),
        notes=(
            "The paper's text of this table is partly garbled; the PGD and TRADES baseline "
            "rows were read from the surviving digits.",
        ),
    )


def _lad_f2() -> PaperTable:
    """LAD Fig. 2 (§4.5): eq. 16's ratio ‖x(0) + f(x(0), 0)‖₂ / ‖∂L/∂x(0)‖₂ traced during
    training. The paper plots one curve, PGD training on CIFAR-100 (from about 2 × 10⁶ at
    the start down to a minimum above 1 × 10⁵ near the end); the issue asks for natural, PGD
    and TRADES training each with and without LAD, so every row traces it (trace_eq16)."""
    methods = ("", " + LAD")
    rows: list[Row] = []
    for base_label in ("natural", "PGD", "TRADES"):
        values = {f"{base_label}{m}": () for m in methods}
        rows += _lad_rows(values, (), "cifar100", _BASE[base_label], "")
    rows = [Row(r.label, {**r.train, "trace_eq16": True}, {}, r.group) for r in rows]
    return PaperTable(
        "lad-f2",
        "lad",
        2,
        "The ratio of eq. 16 during training, natural, PGD and TRADES with and without LAD",
        "lad-cifar100",
        (),
        tuple(rows),
        kind="eq16",
        notes=(
            "The paper's Fig. 2 has one curve, PGD training on CIFAR-100: about 2 × 10⁶ at the "
            "start, falling to a minimum above 1 × 10⁵ near the end of training; the other "
            "five rows are not in the paper.",
            "The ratio is measured after each epoch on the first batch of training images in "
            "eval mode, with the batch-mean loss: its denominator carries a factor 1/B, so the "
            "ratio grows roughly in proportion to the batch size B (the paper's B is 128).",
        ),
    )


def _all() -> dict[str, PaperTable]:
    tables = [
        _sonet_t1(),
        _sonet_t2(),
        _sonet_t3(),
        _sonet_t4(),
        _lad_table(1, "LAD on natural training, CIFAR-10/100, FGSM and IFGSM", _LAD_T1, True),
        _lad_table(2, "LAD on PGD training, CIFAR-10/100, FGSM and IFGSM", _LAD_T2, False),
        _lad_table(3, "LAD on TRADES training, CIFAR-10/100, FGSM and IFGSM", _LAD_T3, False),
        _lad_table(
            4,
            "LAD with noise injection, PGD training, CIFAR-10",
            {"cifar10": _LAD_T4},
            False,
            autoattack=True,
        ),
        _lad_t5(),
        _lad_t6(),
        _lad_table(
            7,
            "LAD with noise injection, PGD training, CIFAR-100 (appendix D)",
            {"cifar100": _LAD_T7},
            False,
            autoattack=True,
        ),
        _lad_f2(),
    ]
    return {t.name: t for t in tables}


PAPER_TABLES: dict[str, PaperTable] = _all()
