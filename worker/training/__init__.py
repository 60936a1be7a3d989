"""Training in pure PyTorch: data on the device, models, the loop, checkpoints."""

from worker.training.engine import (
    CheckpointInfo,
    Reporter,
    TrainingError,
    TrainResult,
    TrainSpec,
    train,
)
from worker.training.models import build_model, load_init_weights

__all__ = [
    "CheckpointInfo",
    "Reporter",
    "TrainResult",
    "TrainSpec",
    "TrainingError",
    "build_model",
    "load_init_weights",
    "train",
]
