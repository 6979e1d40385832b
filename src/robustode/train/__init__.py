"""Training: ``train(config, run_dir)``, its config and presets, checkpoints, schedules, DDP.

See docs/training.md for the run folder, the resume contract and DDP.
"""

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    find_checkpoint,
    list_checkpoints,
    load_model,
    read_checkpoint,
    read_weights,
    select_checkpoint,
)
from .config import PRESETS, ConfigError, TrainConfig, build_config, read_config_file
from .loop import (
    TrainingError,
    TrainingStopped,
    TrainSummary,
    build_model,
    epoch_seed,
    evaluate,
    train,
)
from .run_folder import RESUMABLE, read_metrics, read_run_config
from .schedule import PiecewiseSchedule, make_optimizer

__all__ = [
    "PRESETS",
    "RESUMABLE",
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "PiecewiseSchedule",
    "TrainConfig",
    "TrainSummary",
    "TrainingError",
    "TrainingStopped",
    "build_config",
    "build_model",
    "epoch_seed",
    "evaluate",
    "find_checkpoint",
    "list_checkpoints",
    "load_model",
    "make_optimizer",
    "read_checkpoint",
    "read_config_file",
    "read_metrics",
    "read_run_config",
    "read_weights",
    "select_checkpoint",
    "train",
]
