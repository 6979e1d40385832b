"""Training defenses of both papers, each ``loss(model, x, y) → (loss, stats)``.

Registered: ``natural``, ``pgd_at`` (Madry et al.), ``trades`` (Zhang et
al.), ``lad`` / ``lad_sm`` (LAD eq. 5 / eq. 8, each on base natural, pgd_at
or trades) and ``noise`` (Gaussian noise at every perturbation point around
any other defense); :class:`NoisyEnsemble` is the noise defense's inference
model. See docs/defenses.md.
"""

from . import adversarial as _adversarial  # noqa: F401  (registers)
from . import lad as _lad  # noqa: F401  (registers)
from . import natural as _natural  # noqa: F401  (registers)
from . import noise as _noise  # noqa: F401  (registers)
from .adversarial import (
    TRADES,
    PGDTraining,
    TradesAttack,
    TrainingAttack,
    batch_generator,
    trades_kl,
)
from .base import (
    Defense,
    DefenseConfigError,
    Stats,
    create_defense,
    defense_entry,
    list_defenses,
    register_defense,
)
from .lad import (
    LayerwiseAdversarialDefense,
    lad_offsets,
    lad_sm_offsets,
    record_point_gradients,
)
from .natural import NaturalTraining
from .noise import NoiseInjection, NoisyEnsemble, PointNoise

__all__ = [
    "TRADES",
    "Defense",
    "DefenseConfigError",
    "LayerwiseAdversarialDefense",
    "NaturalTraining",
    "NoiseInjection",
    "NoisyEnsemble",
    "PGDTraining",
    "PointNoise",
    "Stats",
    "TradesAttack",
    "TrainingAttack",
    "batch_generator",
    "create_defense",
    "defense_entry",
    "lad_offsets",
    "lad_sm_offsets",
    "list_defenses",
    "record_point_gradients",
    "register_defense",
    "trades_kl",
]
