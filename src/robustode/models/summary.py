"""Plain-data summaries of registered models, for ``robustode models`` and reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .registry import create_model, list_models, model_entry


@dataclass
class ModelSummary:
    name: str
    paper: str
    summary: str
    parameters: int
    ode_blocks: list[dict[str, Any]] = field(default_factory=list)
    perturbation_points: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    ode_options: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize_model(name: str, /, **options: Any) -> ModelSummary:
    """Build ``name`` with ``options`` (``seed`` 0 unless given) and describe it."""
    entry = model_entry(name)
    options = dict(options)
    seed = options.pop("seed", 0)
    model = create_model(name, seed=seed, **options)
    return ModelSummary(
        name=name,
        paper=entry.paper,
        summary=entry.summary,
        parameters=sum(p.numel() for p in model.parameters()),
        ode_blocks=[
            {"block": path, "type": type(block).__name__, "solver": block.solver.describe()}
            for path, block in model.named_ode_blocks()
        ],
        perturbation_points=model.perturbation_points(),
        options={k: v for k, v in model.model_config.items() if k not in ("name", "seed")},
        ode_options=list(entry.ode_options),
    )


def summarize_all() -> list[ModelSummary]:
    """Every registered model at its default options."""
    return [summarize_model(name) for name in list_models()]
