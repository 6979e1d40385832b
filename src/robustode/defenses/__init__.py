"""Training defenses of both papers, each ``loss(model, x, y) → (loss, stats)``."""

from . import natural as _natural  # noqa: F401  (registers)
from .base import (
    Defense,
    DefenseConfigError,
    Stats,
    create_defense,
    defense_entry,
    list_defenses,
    register_defense,
)

__all__ = [
    "Defense",
    "DefenseConfigError",
    "Stats",
    "create_defense",
    "defense_entry",
    "list_defenses",
    "register_defense",
]
