"""Attacks on any classifier taking images in [0, 1]: ``x_adv = attack(model, x, y)``.

One threat model (:class:`ThreatModel`), one iterative gradient loop
(:class:`GradientAttack`) behind FGSM, IFGSM, PGD and CW-margin PGD, and the
other attacks of both papers and AutoAttack; ``create_attack(name)`` gives
the papers' settings by name.
"""

from .adaptive import (
    SUBSTITUTES,
    SolverSubstitute,
    SolverSubstitution,
    batch_shared_step_control,
    has_ode_blocks,
    substitute_solver,
)
from .apgd import APGD, APGDCE, APGDDLR, APGDT
from .autoattack import VERSIONS, AutoAttack, autoattack
from .base import (
    Attack,
    AttackError,
    AttackInputError,
    AttackResult,
    model_mode,
    seeded_model_rng,
)
from .carlini_wagner import CarliniWagnerLinf
from .ensemble import AttackEnsemble, ensemble_report
from .eot import EOT, RandomnessCheck, check_randomness
from .fab import FAB, FABT, project_hyperplane_box
from .gradient import FGSM, IFGSM, PGD, CWMarginPGD, GradientAttack
from .losses import cross_entropy, cw_margin, dlr, largest_other_logit, targeted_dlr
from .presets import attack_preset, create_attack, list_attacks
from .spsa import SPSA
from .square import Square
from .threat import NORMS, ThreatModel, project_l1_box

__all__ = [
    "APGD",
    "APGDCE",
    "APGDDLR",
    "APGDT",
    "EOT",
    "FAB",
    "FABT",
    "FGSM",
    "IFGSM",
    "NORMS",
    "PGD",
    "SPSA",
    "SUBSTITUTES",
    "VERSIONS",
    "Attack",
    "AttackEnsemble",
    "AttackError",
    "AttackInputError",
    "AttackResult",
    "AutoAttack",
    "CWMarginPGD",
    "CarliniWagnerLinf",
    "GradientAttack",
    "RandomnessCheck",
    "SolverSubstitute",
    "SolverSubstitution",
    "Square",
    "ThreatModel",
    "attack_preset",
    "autoattack",
    "batch_shared_step_control",
    "check_randomness",
    "create_attack",
    "cross_entropy",
    "cw_margin",
    "dlr",
    "ensemble_report",
    "has_ode_blocks",
    "largest_other_logit",
    "list_attacks",
    "model_mode",
    "project_hyperplane_box",
    "project_l1_box",
    "seeded_model_rng",
    "substitute_solver",
    "targeted_dlr",
]
