"""Weights: checkpoint files, the model zoo, and the converter for TF Object Detection API graphs."""

from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .zoo import MODELS, ZooError, fetch, resolve

__all__ = [
    "MODELS",
    "CheckpointError",
    "ZooError",
    "fetch",
    "load_checkpoint",
    "read_checkpoint",
    "resolve",
    "save_checkpoint",
]
